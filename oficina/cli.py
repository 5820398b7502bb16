"""The command line: one thin function per command; parse flags, call the library, print."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .errors import OficinaError
from .options import PARAMS

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(fn):
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _registry():
    from .registry.registry import Registry

    return Registry()


def _option_flags(p: argparse.ArgumentParser) -> None:
    """One flag per parameter in the Options table (the one home of their names)."""
    g = p.add_argument_group("parameters (Ollama's names; unset = the model's or Ollama's default)")
    for prm in PARAMS:
        flag = "--" + prm.name.replace("_", "-")
        if prm.type is list:
            g.add_argument(flag, dest=prm.name, action="append", metavar="TEXT", help=prm.help)
        else:
            g.add_argument(flag, dest=prm.name, type=str, metavar=prm.type.__name__.upper(),
                           help=f"{prm.help} (default {prm.default})")


def _options_from(args: argparse.Namespace) -> dict[str, Any]:
    return {p.name: getattr(args, p.name) for p in PARAMS if getattr(args, p.name, None) is not None}


def _human(n: float, unit: str = "B") -> str:
    for u in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f} {u}{unit}" if u == "" else f"{n:.1f} {u}{unit}"
        n /= 1000
    return f"{n:.1f} P{unit}"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)


def _short(name: str) -> str:
    return name[:-7] if name.endswith(":latest") else name


# -- registry commands ---------------------------------------------------------------------------
@command
def cmd_pull(args) -> None:
    from .registry.sources import pull

    entry = pull(_registry(), args.source, args.name)
    print(f"{_short(entry.name)} version {entry.version} ({entry.digest[7:19]}) "
          f"{_human(entry.manifest.size)}")


@command
def cmd_list(args) -> None:
    from rich.table import Table

    entries = _registry().list()
    if args.json:
        print(json.dumps([{"name": e.name, "version": e.version, "digest": e.digest,
                           "size": e.manifest.size, **e.manifest.details} for e in entries], indent=2))
        return
    t = Table(box=None, pad_edge=False)
    for col in ("NAME", "VERSION", "ID", "SIZE", "PARAMS", "QUANT", "MODIFIED"):
        t.add_column(col)
    for e in entries:
        d = e.manifest.details
        t.add_row(e.name, str(e.version), e.digest[7:19], _human(e.manifest.size),
                  _count(d.get("parameters")), str(d.get("quantization", "-")),
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created)))
    _console().print(t)


@command
def cmd_cp(args) -> None:
    e = _registry().copy(args.source, args.destination)
    print(f"copied {args.source} to {_short(e.name)} (version {e.version})")


@command
def cmd_rm(args) -> None:
    reg = _registry()
    for name in args.names:
        freed = reg.remove(name)
        print(f"deleted {name} ({_human(freed)} freed)")


@command
def cmd_history(args) -> None:
    from rich.table import Table

    versions, head = _registry().history(args.name)
    if args.json:
        print(json.dumps([{"version": e.version, "current": e.version == head, "digest": e.digest,
                           "parent": e.parent, "created": e.created, "producer": e.producer,
                           "metrics": e.metrics} for e in versions], indent=2))
        return
    t = Table(box=None, pad_edge=False)
    for col in ("", "VERSION", "ID", "PARENT", "MADE BY", "CREATED", "METRICS"):
        t.add_column(col)
    for e in versions:
        made = e.producer.get("op", "?")
        if e.producer.get("source"):
            made += f" {e.producer['source']}"
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in e.metrics.items())
        t.add_row("*" if e.version == head else "", str(e.version), e.digest[7:19], e.parent or "-",
                  made, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created)), metrics or "-")
    _console().print(t)


@command
def cmd_rollback(args) -> None:
    e = _registry().rollback(args.name, args.to)
    print(f"{_short(e.name)} now points at version {e.version} ({e.digest[7:19]})")


@command
def cmd_create(args) -> None:
    from .create import create

    e = create(_registry(), args.name, Path(args.file))
    print(f"created {_short(e.name)} version {e.version} ({e.digest[7:19]})")


@command
def cmd_show(args) -> None:
    from .api import resolve
    from .create import to_modelfile
    from .models.info import describe
    from .options import Options

    reg = _registry()
    entry = resolve(args.name, reg)
    m = entry.manifest
    if args.modelfile:
        print(to_modelfile(entry, reg), end="")
        return
    if args.parameters:
        for k, v in Options.from_mapping(m.params).to_pairs():
            print(f"{k:<20} {json.dumps(v) if k == 'stop' else v}")
        return
    if args.template or args.system or args.license:
        text = m.template if args.template else m.system if args.system else "\n".join(m.license)
        print(text or "", end="\n" if text else "")
        return
    info = describe(reg.snapshot(entry), m.format)
    params = Options.from_mapping(m.params).to_dict()
    if args.json:
        d = info.to_dict(tensors=args.verbose)
        d.update(name=entry.name, version=entry.version, digest=entry.digest, parameters_default=params,
                 model_parameters=m.params, license=m.license or ([info.license] if info.license else []),
                 template=m.template, system=m.system, adapters=[a.path for a in m.adapters])
        print(json.dumps(d, indent=2))
        return
    _print_info(entry, info, params)


def _print_info(entry, info, params) -> None:
    from rich.table import Table

    c = _console()
    t = Table(box=None, pad_edge=False, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("model", f"{entry.name} (version {entry.version}, {entry.digest[7:19]})"),
        ("architecture", info.architecture), ("family", info.family), ("kind", info.kind),
        ("parameters", f"{_count(info.parameters)} ({info.parameters:,})"),
        ("layers", info.layers), ("attention heads", info.heads), ("key/value heads", info.kv_heads),
        ("head dimension", info.head_dim), ("context length", info.context_length),
        ("embedding length", info.embedding_length), ("feed-forward length", info.feed_forward_length),
        ("vocabulary size", info.vocab_size),
        ("quantization", f"{info.file_type}, {info.bits_per_weight:.2f} bits per weight"),
        ("file size", _human(info.file_size)), ("format", info.format),
        ("chat template", "yes" if info.chat_template or entry.manifest.template else "no"),
        ("license", "; ".join(entry.manifest.license) or info.license or "-"),
    ]
    for k, v in rows:
        t.add_row(k, "-" if v is None else str(v))
    c.print(t)
    c.print("\n[bold]tensor types by component[/]")
    q = Table(box=None, pad_edge=False, show_header=False)
    for comp, types in info.quantization.items():
        q.add_row(f"  {comp}", ", ".join(f"{k} x{n}" for k, n in types.items()))
    c.print(q)
    c.print("\n[bold]parameters[/] (* = set by this model)")
    p = Table(box=None, pad_edge=False, show_header=False)
    for k, v in params.items():
        p.add_row(f"  {k}", json.dumps(v) if isinstance(v, list) else str(v),
                  "*" if k in entry.manifest.params else "")
    c.print(p)
    if entry.manifest.system:
        c.print(f"\n[bold]system[/]\n  {entry.manifest.system}", markup=True)


# -- running -------------------------------------------------------------------------------------
@command
def cmd_run(args) -> int | None:
    from .api import load

    opts = _options_from(args)
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    model = load(args.name, **opts)
    if prompt is None:
        return _chat_loop(model, args)
    out = sys.stdout
    for piece in model.stream(prompt, raw=args.raw, system=args.system):
        out.write(piece)
        out.flush()
    out.write("\n")
    if args.verbose:
        _print_stats(model.last_stats)
    return None


def _print_stats(s) -> None:
    if s is None:
        return
    err = sys.stderr
    rate = lambda n, t: f"{n / t:.2f} tokens/s" if t > 0 else "-"
    print(f"prompt eval count:    {s.prompt_tokens} token(s)", file=err)
    print(f"prompt eval duration: {s.prompt_seconds:.3f}s", file=err)
    print(f"prompt eval rate:     {rate(s.prompt_tokens, s.prompt_seconds)}", file=err)
    print(f"eval count:           {s.eval_tokens} token(s)", file=err)
    print(f"eval duration:        {s.eval_seconds:.3f}s", file=err)
    print(f"eval rate:            {rate(s.eval_tokens, s.eval_seconds)}", file=err)
    print(f"done reason:          {s.done_reason}", file=err)


CHAT_HELP = """commands:
  /set parameter NAME VALUE   change a parameter (e.g. /set parameter temperature 0.2)
  /set system TEXT            set the system message
  /show parameters            the parameters in use
  /clear                      forget the conversation
  /bye                        leave (Ctrl-D too)"""


def _chat_loop(model, args) -> int:
    from .options import Options

    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print(f"chatting with {args.name}; /? for help, /bye to leave", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            parts = text.split(maxsplit=3)
            try:
                if parts[0] in ("/bye", "/exit"):
                    return 0
                if parts[0] == "/clear":
                    history = [m for m in history if m["role"] == "system"]
                    print("conversation cleared")
                elif parts[:2] == ["/set", "parameter"] and len(parts) == 4:
                    model.options = Options.from_pairs([(parts[2], parts[3])], base=model.options)
                    print(f"set {parts[2]} to {parts[3]}")
                elif parts[:2] == ["/set", "system"] and len(parts) >= 3:
                    value = text.split(maxsplit=2)[2]
                    history = [m for m in history if m["role"] != "system"]
                    history.insert(0, {"role": "system", "content": value})
                    print("system message set")
                elif parts[:2] == ["/show", "parameters"]:
                    for k, v in model.options.to_dict().items():
                        print(f"{k:<20} {v}")
                else:
                    print(CHAT_HELP)
            except OficinaError as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        reply = []
        try:
            for piece in model.chat_stream(history):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        print("\n")
        history.append({"role": "assistant", "content": "".join(reply)})
        if args.verbose:
            _print_stats(model.last_stats)


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oficina", description="A workbench for LLM weights and parameters.")
    p.add_argument("--version", action="version", version=f"oficina {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("pull", help="fetch a model into the registry (catalogue name, .gguf, HF folder, hf://id)")
    s.add_argument("source")
    s.add_argument("--name", help="register under this name (default: derived from the source)")

    s = sub.add_parser("list", aliases=["ls"], help="models in the registry")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("show", help="what a model is: architecture, sizes, quantization, parameters")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    s.add_argument("--verbose", "-v", action="store_true", help="with --json: every tensor")
    s.add_argument("--modelfile", action="store_true", help="a Modelfile that re-creates the model")
    s.add_argument("--parameters", action="store_true")
    s.add_argument("--template", action="store_true")
    s.add_argument("--system", action="store_true")
    s.add_argument("--license", action="store_true")

    s = sub.add_parser("run", help="generate from a prompt, or chat when no prompt is given")
    s.add_argument("name")
    s.add_argument("prompt", nargs="?")
    s.add_argument("--raw", action="store_true", help="do not apply the chat template")
    s.add_argument("--system", help="system message")
    s.add_argument("--verbose", action="store_true", help="print timings after the answer")
    _option_flags(s)

    s = sub.add_parser("create", help="create a model from a Modelfile")
    s.add_argument("name")
    s.add_argument("-f", "--file", default="Modelfile")

    s = sub.add_parser("cp", help="copy a model to a new name")
    s.add_argument("source")
    s.add_argument("destination")

    s = sub.add_parser("rm", help="remove models")
    s.add_argument("names", nargs="+")

    s = sub.add_parser("history", help="versions of a model, their parents and what made them")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("rollback", help="point a name back at an earlier version")
    s.add_argument("name")
    s.add_argument("--to", type=int, help="version number (default: the one before the current)")
    return p


ALIASES = {"ls": "list"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    fn = COMMANDS[ALIASES.get(args.command, args.command)]
    try:
        return fn(args) or 0
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


if __name__ == "__main__":
    sys.exit(main())
