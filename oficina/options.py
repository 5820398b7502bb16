"""Options: the sampling and runtime parameters, with Ollama's names and defaults, in one place.

CLI flags, Modelfile ``PARAMETER`` lines and (later) HTTP ``options`` all become an ``Options``.
Defaults follow Ollama's ``api.DefaultOptions()`` (api/types.go) and docs/modelfile.md:
``repeat_penalty`` 1.0 (disabled) as in current Ollama, ``seed`` -1 meaning "random each run",
``num_ctx`` 4096 (Ollama's default context length on machines without a large GPU).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .errors import InvalidOptions


@dataclass(frozen=True)
class Range:
    """A valid range that can also be read (``lo``/``hi``), so a form or the web UI can draw the
    control from the table instead of keeping its own copy of the limits."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed (repeat_penalty > 0)

    def __call__(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or v <= self.hi


def _between(lo: float, hi: float) -> Range:
    return Range(lo, hi)


def _at_least(lo: float) -> Range:
    return Range(lo)


@dataclass(frozen=True)
class Param:
    """What one parameter means: its type, default, valid range (as text for messages) and help."""

    name: str
    type: type
    default: Any
    valid: Callable[[Any], bool] | None
    valid_text: str
    help: str
    # Where a slider is useful when the valid range is open-ended (temperature >= 0): the span
    # people actually use. Only a hint for controls; validation is ``valid``.
    typical: tuple[float, float] | None = None


# The one table of parameters. Order is the order shown to users.
PARAMS: tuple[Param, ...] = (
    Param("temperature", float, 0.8, _at_least(0.0), ">= 0",
          "randomness; 0 picks the most likely token (greedy)", (0.0, 2.0)),
    Param("top_k", int, 40, _at_least(0), ">= 0",
          "keep only the k most likely tokens (0 = off)", (0, 100)),
    Param("top_p", float, 0.9, _between(0.0, 1.0), "between 0 and 1",
          "keep the smallest set of tokens whose probability adds up to p (1 = off)"),
    Param("min_p", float, 0.0, _between(0.0, 1.0), "between 0 and 1",
          "drop tokens less likely than min_p x the most likely one (0 = off)"),
    Param("typical_p", float, 1.0, _between(0.0, 1.0), "between 0 and 1",
          "locally typical sampling mass (1 = off)"),
    Param("repeat_penalty", float, 1.0, Range(0.0, lo_open=True), "> 0",
          "penalise tokens seen in the last repeat_last_n tokens (1 = off)", (0.5, 2.0)),
    Param("repeat_last_n", int, 64, _at_least(-1), ">= -1",
          "how far back the penalties look (0 = off, -1 = num_ctx)", (-1, 512)),
    Param("presence_penalty", float, 0.0, _between(-2.0, 2.0), "between -2 and 2",
          "subtract this from every token already present"),
    Param("frequency_penalty", float, 0.0, _between(-2.0, 2.0), "between -2 and 2",
          "subtract this x the number of times a token appeared"),
    Param("num_predict", int, -1, _at_least(-2), ">= -2",
          "maximum tokens to generate (-1 = until done or context full, -2 = fill context)"),
    Param("num_ctx", int, 4096, _at_least(1), ">= 1",
          "context window in tokens (prompt + answer)"),
    Param("seed", int, -1, _at_least(-1), ">= -1",
          "random seed; the same seed, options and prompt give the same text (-1 = random)"),
    Param("stop", list, (), None, "text",
          "stop when this text appears (repeatable)"),
    Param("num_thread", int, 0, _at_least(0), ">= 0",
          "CPU threads for the matrix products (0 = torch's default: the physical cores)"),
    Param("num_batch", int, 512, _at_least(1), ">= 1",
          "prompt tokens processed per step when reading a long prompt"),
    # Not an Ollama parameter: oficina's filters (oficina/safety), here so that a flag, a
    # Modelfile line, an API option and a server request name them the same way.
    Param("guard", list, (), None, "text",
          "check the prompt and the answer with this guard (repeatable): pii, content, "
          "rules=FILE, classifier=MODEL, grounding"),
    # Not an Ollama parameter either: a model bound to a collection (oficina/rag) answers every
    # question through it (retrieve, the documents in the prompt, checked citations). A list so
    # that "no collection" is the empty default; more than one is refused where it is used.
    Param("rag", list, (), None, "text",
          "answer from this collection (oficina rag): NAME or NAME@VERSION"),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def _coerce(param: Param, value: Any) -> Any:
    """Turn a value from a flag, a Modelfile or JSON into the parameter's type, or raise."""
    name = param.name
    if param.type is list:
        if isinstance(value, str):
            values = [value]
        elif isinstance(value, Iterable):
            values = list(value)
        else:
            raise InvalidOptions(f"{name} must be text or a list of texts, got {value!r}")
        for v in values:
            if not isinstance(v, str) or v == "":
                raise InvalidOptions(f"{name} must be non-empty text, got {v!r}")
        return tuple(values)
    if isinstance(value, bool):
        raise InvalidOptions(f"{name} must be a number, got {value!r}")
    try:
        if param.type is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            out = int(str(value).strip()) if isinstance(value, str) else int(value)
        else:
            out = float(value)
    except (TypeError, ValueError):
        kind = "an integer" if param.type is int else "a number"
        raise InvalidOptions(f"{name} must be {kind}, got {value!r}") from None
    if isinstance(out, float) and not math.isfinite(out):
        raise InvalidOptions(f"{name} must be a finite number, got {value!r}")
    if param.valid is not None and not param.valid(out):
        raise InvalidOptions(f"{name} must be {param.valid_text}, got {value!r}")
    return out


@dataclass(frozen=True)
class Options:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_predict: int = -1
    num_ctx: int = 4096
    seed: int = -1
    stop: tuple[str, ...] = field(default_factory=tuple)
    num_thread: int = 0
    num_batch: int = 512
    guard: tuple[str, ...] = field(default_factory=tuple)
    rag: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for p in PARAMS:
            object.__setattr__(self, p.name, _coerce(p, getattr(self, p.name)))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, base: "Options | None" = None) -> "Options":
        """Options from a mapping of parameter names (strings accepted, as in a Modelfile), on top
        of ``base`` (defaults when None). Unknown names are an error that lists the valid ones."""
        current = dataclasses.asdict(base) if base is not None else {}
        for key, value in (values or {}).items():
            if key not in BY_NAME:
                raise InvalidOptions(f"unknown parameter {key!r}; valid: {', '.join(NAMES)}")
            if value is None:
                continue
            current[key] = value
        return cls(**current)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], base: "Options | None" = None) -> "Options":
        """Options from ``(name, value)`` pairs such as Modelfile PARAMETER lines; repeated
        ``stop`` (and ``guard``) lines accumulate, any other repeat keeps the last value (as Ollama
        does)."""
        return cls.from_mapping(pairs_to_mapping(pairs), base)

    def merged(self, overrides: Mapping[str, Any] | None) -> "Options":
        return Options.from_mapping(overrides, base=self)

    # -- views --------------------------------------------------------------------------------
    def to_dict(self, changed_only: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in PARAMS:
            v = getattr(self, p.name)
            if p.type is list:
                v = list(v)
                if changed_only and not v:
                    continue
            elif changed_only and v == p.default:
                continue
            out[p.name] = v
        return out

    def to_pairs(self, changed_only: bool = True) -> list[tuple[str, str]]:
        """``(name, value)`` pairs for Modelfile PARAMETER lines."""
        pairs: list[tuple[str, str]] = []
        for name, value in self.to_dict(changed_only).items():
            if isinstance(value, list):
                pairs.extend((name, v) for v in value)
            else:
                pairs.append((name, _fmt(value)))
        return pairs


def pairs_to_mapping(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in BY_NAME and BY_NAME[key].type is list:
            out.setdefault(key, []).append(value)
        else:
            out[key] = value
    return out


def validate_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check a partial set of parameters (as stored with a model) and return it normalised,
    keeping only the keys given."""
    full = Options.from_mapping(values)
    return {k: (list(getattr(full, k)) if BY_NAME[k].type is list else getattr(full, k)) for k in values}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value).rstrip("0").rstrip(".") if "." in repr(value) and "e" not in repr(value) else repr(value)
    return str(value)
