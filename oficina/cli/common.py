"""Helpers shared by the command modules: parameter flags, sizes, the console."""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence

from ..options import PARAMS, validate_mapping
from ..registry.registry import Entry, Registry


def console():
    import sys

    from rich.console import Console

    # Piped output is read by people and scripts alike: don't squeeze tables to 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def registry():
    return Registry()


def when(t: float, seconds: bool = True) -> str:
    """A timestamp as the CLI prints it (local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(t))


def print_history(versions: Sequence[Entry], head: int, extra: dict[str, Callable[[Entry], str]]) -> None:
    """The versions of a registry item (``oficina history``, ``oficina rag history``): the
    current one starred, its id, parent, what made it and when, then the ``extra`` columns."""
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for col in ("", "VERSION", "ID", "PARENT", "MADE BY", "CREATED", *extra):
        t.add_column(col)
    for e in versions:
        made = e.producer.get("op", "?")
        if e.producer.get("source"):
            made += f" {e.producer['source']}"
        t.add_row("*" if e.version == head else "", str(e.version), e.digest[7:19], e.parent or "-", made,
                  when(e.created), *(column(e) for column in extra.values()))
    console().print(t)


def literal(text: str) -> str:
    """Help text taken from data (a dataclass field's help), safe for argparse, which treats
    help as a %-format string ("~30% slower" rendered argparse's internal dict)."""
    return text.replace("%", "%%")


def option_flags(p: argparse.ArgumentParser) -> None:
    """One flag per parameter in the Options table (the one home of their names)."""
    g = p.add_argument_group("parameters (Ollama's names; unset = the model's or Ollama's default)")
    for prm in PARAMS:
        flag = "--" + prm.name.replace("_", "-")
        if prm.type is list:
            g.add_argument(flag, dest=prm.name, action="append", metavar="TEXT", help=literal(prm.help))
        else:
            g.add_argument(flag, dest=prm.name, type=str, metavar=prm.type.__name__.upper(),
                           help=literal(f"{prm.help} (default {prm.default})"))


def options_from(args: argparse.Namespace) -> dict[str, Any]:
    """The parameter flags given, checked now: a wrong value is refused before any model loads."""
    given = {p.name: getattr(args, p.name) for p in PARAMS if getattr(args, p.name, None) is not None}
    validate_mapping(given)
    return given


def human(n: float, unit: str = "B") -> str:
    for u in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f} {u}{unit}" if u == "" else f"{n:.1f} {u}{unit}"
        n /= 1000
    return f"{n:.1f} P{unit}"


def count(n: int | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{suffix}"
    return str(n)


def short(name: str) -> str:
    return name[:-7] if name.endswith(":latest") else name
