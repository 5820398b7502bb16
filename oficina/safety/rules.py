"""``rules=FILE``: block, flag, redact and allow lists a user edits, one rule per line::

    # comments and blank lines are ignored
    block:illegal   how to hotwire a car          a phrase: case-insensitive, whole words
    block           /\\bpassword\\s*[:=]/i         a regex between slashes (flags: i m s x)
    flag:profanity  damn
    redact:secret   /sk-[A-Za-z0-9]{20,}/         replaced by [SECRET]
    allow           kill the process              text inside an allowed phrase never matches

The category after ``:`` is optional (default: the action's name). Regexes come from users, so
they are compiled with the ``regex`` module and every search has a time budget (``TIMEOUT_S``); a
pattern with a quantified group that is itself quantified (``(a+)+``, ``(\\w*)*``, the classic
catastrophic-backtracking shape) is refused when the file is read. Every mistake names the file
and line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex

from ..formats.untrusted import read_text
from .guard import Guard, GuardError, Span, Verdict, redact, register

ACTIONS = ("block", "flag", "redact", "allow")
TIMEOUT_S = 0.05  # per search; a pattern that needs longer on a 1,000-character text is hostile
MAX_BYTES = 1 << 20
_FLAGS = {"i": regex.IGNORECASE, "m": regex.MULTILINE, "s": regex.DOTALL, "x": regex.VERBOSE}
# a group whose last item is quantified, itself quantified: (x+)+ (x*)* (x+){2,} (?:x|y+)*
_NESTED = regex.compile(r"\((?:[^()\\]|\\.)*[+*}]\)[+*{]")


@dataclass(frozen=True)
class Rule:
    action: str
    category: str
    pattern: Any  # a compiled regex
    where: str


def parse(text: str, where: str) -> list[Rule]:
    rules = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, value = line.partition(" ")
        action, _, category = head.partition(":")
        loc = f"{where}:{n}"
        if action not in ACTIONS:
            raise GuardError(f"{loc}: unknown action {action!r}; valid: {', '.join(ACTIONS)}")
        value = value.strip()
        if not value:
            raise GuardError(f"{loc}: {action} needs a phrase or a /regex/")
        rules.append(Rule(action, category or action, _compile(value, loc), loc))
    return rules


def _compile(value: str, loc: str):
    if value.startswith("/") and value.rfind("/") > 0:
        end = value.rfind("/")
        body, flags = value[1:end], value[end + 1:]
        bad = set(flags) - set(_FLAGS)
        if bad:
            raise GuardError(f"{loc}: unknown regex flag(s) {''.join(sorted(bad))!r}; valid: i m s x")
        if _NESTED.search(body):
            raise GuardError(f"{loc}: refused regex {body!r}: a repeated group that repeats inside "
                             f"(like (a+)+) can take exponential time; rewrite it without the nesting")
        f = 0
        for c in flags:
            f |= _FLAGS[c]
        try:
            return regex.compile(body, f)
        except regex.error as e:
            raise GuardError(f"{loc}: invalid regex {body!r}: {e}") from None
    words = [regex.escape(w) for w in value.split()]
    return regex.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", regex.IGNORECASE)


def read(path: str | os.PathLike) -> list[Rule]:
    p = Path(path).expanduser()
    return parse(read_text(p, MAX_BYTES, "rule file", GuardError), str(p))


class Rules(Guard):
    def __init__(self, rules: list[Rule]):
        self.rules = rules

    def _search(self, rule: Rule, text: str) -> list[tuple[int, int]]:
        try:
            return [m.span() for m in rule.pattern.finditer(text, timeout=TIMEOUT_S) if m.end() > m.start()]
        except TimeoutError:
            raise GuardError(f"{rule.where}: the regex took longer than {TIMEOUT_S * 1000:.0f} ms "
                             f"on a {len(text):,}-character text; simplify it") from None

    def check(self, text: str, context: Mapping[str, Any] | None = None) -> Verdict:
        allowed = [s for r in self.rules if r.action == "allow" for s in self._search(r, text)]
        hits: dict[str, list[Span]] = {"block": [], "redact": [], "flag": []}
        for r in self.rules:
            if r.action == "allow":
                continue
            for a, b in self._search(r, text):
                if not any(x <= a and b <= y for x, y in allowed):
                    hits[r.action].append(Span(a, b, r.category))
        for action in ("block", "redact", "flag"):
            spans = hits[action]
            if spans:
                spans = sorted(spans, key=lambda s: s.start)
                return Verdict(action, spans[0].category, 1.0, tuple(spans), self.name,
                               redact(text, spans) if action == "redact" else None)
        return Verdict("allow", guard=self.name)


@register("rules", "block/flag/redact/allow phrases and regexes from a file", arg="FILE", cache=False)
def _make(arg: str | None) -> Guard:
    if not arg:
        raise GuardError("the rules guard needs a file: rules=PATH")
    return Rules(read(arg))
