"""Helpers shared by the command modules: parameter flags, sizes, the console."""

from __future__ import annotations

import argparse
from typing import Any

from ..options import PARAMS, validate_mapping
from ..registry.registry import Registry


def console():
    import sys

    from rich.console import Console

    # Piped output is read by people and scripts alike: don't squeeze tables to 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def registry():
    return Registry()


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
