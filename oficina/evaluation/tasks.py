"""The task kinds and what they share: the run configuration, a parsed ``--tasks`` entry, a
metric with its uncertainty, a task's result, line-numbered JSONL reading, and the registry.

A task kind registers itself under its prefix (``ppl``, ``gen``, ``mc``, ``cls``, ``truthful``);
``oficina eval --tasks mc:FILE`` looks the prefix up here, so a new kind is one new module.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..errors import FormatError, OficinaError
from ..formats import records
from ..formats.untrusted import decode

BUILTIN = "builtin"


@dataclass(frozen=True)
class EvalConfig:
    """How to run every task. One object, passed whole (ARCHITECTURE principle 5)."""

    shots: int = 0                 # few-shot examples for mc / truthful, drawn from the same file
    mc_style: str = "cloze"        # a key of multiple_choice.STYLES
    window: int | None = None      # tokens per scored window; None = min(context length, 2048)
    stride: int | None = None      # new tokens per perplexity window; None = window (lm-eval)
    batch_tokens: int = 4096       # at most this many (padded) tokens in one forward pass
    limit: int | None = None       # score only the first N items of each task
    options: dict[str, Any] = field(default_factory=dict)  # Options overrides for gen tasks
    bootstrap: int = 200           # resamples for corpus-level metrics' standard errors
    seed: int = 1234               # few-shot sampling and bootstrap (lm-eval's default seed)

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise OficinaError(f"shots must be 0 or more, got {self.shots}")
        if self.window is not None and self.window < 2:
            raise OficinaError(f"window must be at least 2 tokens, got {self.window}")
        if self.stride is not None and self.stride < 1:
            raise OficinaError(f"stride must be at least 1 token, got {self.stride}")
        if self.batch_tokens < 1:
            raise OficinaError(f"batch tokens must be at least 1, got {self.batch_tokens}")
        if self.limit is not None and self.limit < 1:
            raise OficinaError(f"limit must be at least 1, got {self.limit}")


@dataclass
class Metric:
    value: float
    stderr: float | None = None    # standard error; the 95% interval is value ± 1.96·stderr
    higher_is_better: bool = True
    per_item: list[float] | None = None  # item scores, for paired comparisons between models
    scale: float | None = None     # the best possible value of a bounded score (1 or 100)

    @property
    def ci95(self) -> float | None:
        return None if self.stderr is None else 1.96 * self.stderr

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "stderr": self.stderr, "ci95": self.ci95,
                "higher_is_better": self.higher_is_better, "scale": self.scale}


@dataclass
class TaskResult:
    metrics: dict[str, Metric]
    details: dict[str, Any] = field(default_factory=dict)  # counts, options, confusion matrix
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": {k: m.to_dict() for k, m in self.metrics.items()},
                "details": self.details, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class TaskSpec:
    """One entry of ``--tasks``: a kind and a file (or the shipped set)."""

    kind: str
    source: str  # "builtin" or the path as given
    path: Path

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.source}"

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.path.read_bytes()).hexdigest()


class Kind(ABC):
    """A task kind. Subclasses set the class attributes and implement ``load`` and ``run``."""

    name: ClassVar[str]
    title: ClassVar[str]
    builtin: ClassVar[str | None] = None   # file name under oficina/data/eval
    headline: ClassVar[tuple[str, ...]]    # metrics shown in the table, chart and registry

    def check(self, model) -> str | None:
        """None when ``model`` can run this task, else what it would need."""
        if model.info.kind != "decoder-only":
            return "a decoder-only (causal) language model"
        return None

    @abstractmethod
    def load(self, path: Path) -> list[Any]: ...

    @abstractmethod
    def run(self, model, items: list[Any], cfg: EvalConfig, label: str) -> TaskResult: ...


KINDS: dict[str, Kind] = {}


def register(cls: type[Kind]) -> type[Kind]:
    KINDS[cls.name] = cls()
    return cls


def builtin_path(file: str) -> Path:
    return Path(str(resources.files("oficina") / "data" / "eval" / file))


def parse_tasks(text: str) -> list[TaskSpec]:
    """``"ppl:builtin,mc:my.jsonl,gen"`` -> specs. A bare kind means its shipped set."""
    specs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, _, source = part.partition(":")
        if kind not in KINDS:
            raise OficinaError(f"unknown task kind {kind!r} in {part!r}; kinds: {', '.join(KINDS)} "
                               f"(as KIND:FILE or KIND:builtin)")
        source = source or BUILTIN
        if source == BUILTIN:
            if KINDS[kind].builtin is None:
                raise OficinaError(f"{kind} has no shipped set; give a file: {kind}:FILE")
            path = builtin_path(KINDS[kind].builtin)
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise OficinaError(f"task file not found: {source} (in {part!r})")
        specs.append(TaskSpec(kind, source, path))
    if not specs:
        raise OficinaError(f"no tasks given; e.g. --tasks ppl:builtin,mc:builtin (kinds: {', '.join(KINDS)})")
    return specs


def unable(model, label: str, kind: Kind, need: str) -> OficinaError:
    """The error for a model that cannot run a task, naming the tasks it can run."""
    can = [k.name for k in KINDS.values() if k.check(model) is None]
    k = model.info.kind
    what = f"{'an' if k[0] in 'aeiou' else 'a'} {k} model ({model.info.architecture})"
    return OficinaError(f"{label} cannot run {kind.name} ({kind.title}): it needs {need}, and "
                        f"{label} is {what}; tasks it can run: {', '.join(can) or 'none'}")


# -- reading task files -----------------------------------------------------------------------
class At:
    """A place in a task file; ``At(...)(message)`` is the FormatError that names it."""

    def __init__(self, where: str):
        self.where = where

    def __call__(self, message: str) -> FormatError:
        return FormatError(f"{self.where}: {message}")


def read_jsonl(path: Path, check: Callable[[dict, At], Any]) -> list[Any]:
    """Parse a JSONL task file; ``check(obj, err)`` validates one object and returns the item,
    raising ``err(message)``, a FormatError that names the file and line."""
    text = decode(path, path.read_bytes())
    items = [check(obj, At(where)) for obj, where in records.jsonl(path, text)]
    if not items:
        raise FormatError(f"{path}: no items")
    return items


def need_str(obj: dict, key: str, err, allow_empty: bool = False) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        raise err(f"{key!r} must be a non-empty string, got {json.dumps(v)[:60]}")
    return v


def need_choices(obj: dict, err) -> tuple[list[str], int]:
    """``choices`` (two or more strings) and ``answer`` (an index into them)."""
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or \
            not all(isinstance(c, str) and c.strip() for c in choices):
        raise err("'choices' must be a list of at least two non-empty strings")
    return choices, need_index(obj, "answer", len(choices), err)


def need_index(obj: dict, key: str, n: int, err) -> int:
    a = obj.get(key)
    if isinstance(a, bool) or not isinstance(a, int):
        raise err(f"{key!r} must be an integer index into 'choices' (0 to {n - 1}), got {json.dumps(a)}")
    if not 0 <= a < n:
        raise err(f"{key!r} index {a} is out of range: there are {n} choices (valid: 0 to {n - 1})")
    return a
