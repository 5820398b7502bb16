"""The command line. Every module in this package that defines ``register(subparsers)`` adds its
commands (one thin function per command: parse flags, call the library, print); this file only
discovers them, dispatches, and turns errors into one line on stderr."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from .. import __version__
from ..errors import OficinaError
from ..report import command_scope, quiet_libraries

# Listed first, in this order; any other command module is picked up after them.
FIRST = ("run", "models")


def _modules() -> list[str]:
    found = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("common",)]
    return [m for m in FIRST if m in found] + sorted(m for m in found if m not in FIRST)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oficina", description="A workbench for LLM weights and parameters.")
    p.add_argument("--version", action="version", version=f"oficina {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in _modules():
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The command's own parser, so a mistake prints that command's usage, not the top level's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def parse(argv: list[str] | None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The command line as ``main`` reads it (a mistake exits 2 with the command's usage)."""
    parser = parser or build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse takes positionals in one go, so `run NAME --flag X PROMPT` leaves PROMPT over.
        if hasattr(args, "prompt") and not any(e.startswith("-") for e in extra):
            args.prompt = " ".join(([args.prompt] if args.prompt else []) + extra)
        else:
            _subparser(parser, getattr(args, "command", None)).error(
                f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    quiet_libraries(everything=True)
    parser = build_parser()
    args = parse(argv, parser)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with command_scope():
            return args.func(args) or 0
    except OficinaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug, not bad input: one line, the traceback on request
        if os.environ.get("OFICINA_DEBUG"):
            raise
        print(f"error: internal error: {type(e).__name__}: {e} (set OFICINA_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 70
