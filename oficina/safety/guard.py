"""One interface for every filter: ``check(text, context) -> Verdict``, and the registry of guards
by name.

A guard is named by a spec string, the same in a CLI flag, a Modelfile ``PARAMETER guard`` line, an
API call or a server request: ``NAME`` or ``NAME=ARG`` (``pii``, ``content``, ``rules=./my.rules``,
``classifier=minilm-sentiment``, ``grounding``). Guards register where they are defined; this
module only looks them up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import OficinaError

VERDICTS = ("allow", "flag", "redact", "block")  # in order of severity
MAX_CHARS = 1_000_000  # a guard reads text from strangers; a larger input is refused, not scanned


class GuardError(OficinaError):
    """A guard spec, rule file or input a guard cannot work with."""


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    category: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    verdict: str = "allow"
    category: str | None = None
    score: float = 0.0
    spans: tuple[Span, ...] = ()
    guard: str = ""
    redacted: str | None = None  # the text with spans replaced, for verdict "redact"

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def blocked(self) -> bool:
        return self.verdict == "block"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "category": self.category, "score": round(self.score, 4),
                "spans": [s.to_dict() for s in self.spans], "guard": self.guard,
                "redacted": self.redacted}


def redact(text: str, spans: Sequence[Span]) -> str:
    """``text`` with each span replaced by ``[CATEGORY]`` (overlaps merged, first category wins)."""
    out, pos = [], 0
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if s.start < pos:
            continue
        out += [text[pos:s.start], f"[{s.category.upper()}]"]
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


class Guard(ABC):
    """What a guard does. ``check`` decides on a whole text; ``hold`` says, for a stream, from which
    index the text so far cannot be decided yet (more text could change the verdict on it).

    The default ``hold`` keeps back the unfinished sentence: right for classifiers and rules that
    read sentences. Guards that read single tokens (pii) hold back less.
    """

    name = ""
    # How far before new text a stream check must start (None: from the beginning). Grounding
    # scores sentences one by one; pii needs its context words; a classifier needs the context of
    # the whole answer; a user's regex may span anything.
    lookback: int | None = None

    @abstractmethod
    def check(self, text: str, context: Mapping[str, Any] | None = None) -> Verdict: ...

    def hold(self, text: str) -> int:
        return sentence_hold(text)


_END = set(".!?\n。")


def sentence_hold(text: str) -> int:
    """Index after the last sentence end (., !, ? or a line break, followed by a blank or the end
    of a line); everything from there on is an unfinished sentence."""
    for i in range(len(text) - 1, -1, -1):
        c = text[i]
        if c == "\n" or (c in _END and i + 1 < len(text) and text[i + 1].isspace()):
            return i + 1
    return 0


# -- the registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardKind:
    name: str
    make: Callable[[str | None], Guard]  # the spec's ARG (or None) -> a guard
    help: str
    arg: str | None = None  # what ARG means, when the guard takes one
    cache: bool = True  # False: built on every lookup (a rule file is re-read when it changes)


GUARDS: dict[str, GuardKind] = {}


def register(name: str, help: str, arg: str | None = None, cache: bool = True):
    def deco(make: Callable[[str | None], Guard]):
        GUARDS[name] = GuardKind(name, make, help, arg, cache)
        return make
    return deco


def _load_builtins() -> None:
    from . import classifier, grounding, pii, rules  # noqa: F401  (they register themselves)


_cache: dict[str, Guard] = {}


def parse_spec(spec: str) -> tuple[str, str | None]:
    if not isinstance(spec, str) or not spec.strip():
        raise GuardError(f"a guard is NAME or NAME=ARG, got {spec!r}")
    name, sep, arg = spec.strip().partition("=")
    _load_builtins()
    kind = GUARDS.get(name)
    if kind is None:
        raise GuardError(f"unknown guard {name!r}; built in: {', '.join(sorted(GUARDS))} "
                         f"(a registry classifier: classifier=MODEL)")
    if sep and kind.arg is None:
        raise GuardError(f"guard {name!r} takes no argument (got {spec!r})")
    return name, (arg if sep else None)


def get_guard(spec: str | Guard) -> Guard:
    """The guard a spec names. Models are loaded once per process and shared (guards keep no
    per-call state); a rule file is read again on each lookup, so edits apply to the next request."""
    if isinstance(spec, Guard):
        return spec
    name, arg = parse_spec(spec)
    key = f"{name}={arg}" if arg is not None else name
    if key in _cache:
        return _cache[key]
    g = GUARDS[name].make(arg)
    g.name = key
    if GUARDS[name].cache:
        _cache[key] = g
    return g


def check(text: str, guards: str | Guard | Sequence[str | Guard],
          context: Mapping[str, Any] | None = None) -> Verdict:
    """Run each guard; the most severe verdict wins, and redactions from all guards are applied."""
    if isinstance(guards, (str, Guard)):
        guards = [guards]
    check_text(text)
    return combine(text, [get_guard(s).check(text, context) for s in guards])


def combine(text: str, verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict from several guards' verdicts on ``text``."""
    worst = Verdict(guard="")
    spans: list[Span] = []
    for v in verdicts:
        if v.verdict == "redact":
            spans += v.spans
        if VERDICTS.index(v.verdict) > VERDICTS.index(worst.verdict) or \
                (v.verdict == worst.verdict and v.score > worst.score):
            worst = v
    if spans and worst.verdict == "redact":
        return Verdict("redact", worst.category, worst.score, tuple(spans), worst.guard,
                       redact(text, spans))
    return worst


def check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise GuardError(f"a guard checks text, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise GuardError(f"input is {len(text):,} characters; guards read at most {MAX_CHARS:,} "
                         f"at a time (split it)")
    return text
