"""A tuning run's recipe: one typed dataclass, from CLI flags or a YAML file with the same names.

A recipe names the method's own hyper-parameters under a key named after the method (or
``options``), which become that method's ``XConfig``::

    base: smollm2
    method: lora
    data: facts.jsonl
    epochs: 3
    lora: {r: 16, alpha: 32, target_modules: [q_proj, v_proj]}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InvalidOptions
from .method import get, load_all


def digest(value: Any) -> str:
    """A short stable hash of JSON-able ``value``: every run's fingerprint (what determines the
    trained weights; ``--resume`` refuses a checkpoint made with another)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

TASKS = ("auto", "causal", "classification", "seq2seq")
SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16")
TRAIN_ON = ("answers", "all")


def _f(default: Any, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TuneConfig:
    base: str = _f("", "registry name or model folder")
    method: str = _f("lora", "the tuning method (oficina tune --methods lists them)")
    data: str = _f("", "training file: .txt, .jsonl, .csv")
    eval: str | None = _f(None, "validation file; without it val_split is held out")
    out: str | None = _f(None, "registry name of the result")
    task: str = _f("auto", "causal | classification | seq2seq; auto: from the model")
    learning_rate: float | None = _f(None, "peak learning rate; default: the method's")
    schedule: str = _f("cosine", "learning rate after warmup: constant | linear | cosine")
    warmup_steps: int = _f(0, "optimizer steps of linear warmup")
    epochs: int | None = _f(None, "passes over the training data; default: enough for 30 optimizer "
                                  "steps, at most 10 (tuning/defaults.py)")
    max_steps: int | None = _f(None, "overrides epochs")
    batch_size: int = _f(8, "examples per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_length: int = _f(512, "longest example in tokens (packed row length with packing)")
    precision: str = _f("fp32", "fp32 | bf16 (autocast; weights and optimizer stay fp32)")
    seed: int = _f(0, "seeds initialisation, data order, validation split and dropout")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, ~30% slower")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay")
    max_grad_norm: float | None = _f(1.0, "clip the gradient norm to this (0: no clipping)")
    packing: bool = _f(False, "causal LM: several short examples per row")
    group_by_length: bool = _f(True, "batch examples of similar length (less padding)")
    train_on: str = _f("answers", "instruction/chat: loss on the answers only, or on all tokens")
    truncate: bool = _f(False, "cut over-long examples instead of reporting them")
    val_split: float = _f(0.1, "fraction of the training file held out when eval is unset")
    labels: list[str] | None = _f(None, "classification label set; default: sorted labels in data")
    eval_every: int = _f(0, "optimizer steps between validations; 0: once per epoch")
    save_every: int = _f(0, "optimizer steps between checkpoints; 0: once per epoch")
    log_every: int = _f(0, "optimizer steps between log lines; 0: about ten per run")
    keep_checkpoints: int = _f(2, "how many recent checkpoints to keep")
    forgetting: bool = _f(True, "causal LM: perplexity on general text before/after")
    run_dir: str | None = _f(None, "checkpoints, loss curve; default $OFICINA_HOME/runs/<out>")
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "the method's XConfig fields"})

    def __post_init__(self) -> None:
        _choice("task", self.task, TASKS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("train_on", self.train_on, TRAIN_ON)
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "keep_checkpoints"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InvalidOptions(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 0:
                raise InvalidOptions(f"{name} must be 0 or more (got {getattr(self, name)})")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidOptions(f"max_steps must be at least 1 (got {self.max_steps})")
        if self.learning_rate is not None and not 0 < self.learning_rate < 10:
            raise InvalidOptions(f"learning_rate must be in (0, 10) (got {self.learning_rate})")
        if not 0 <= self.val_split < 1:
            raise InvalidOptions(f"val_split must be in [0, 1) (got {self.val_split})")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            self.max_grad_norm = None
        if not isinstance(self.options, dict):
            raise InvalidOptions("options must be a mapping of the method's settings")

    # -- derived ------------------------------------------------------------------------------
    def method_config(self):
        """The method's own typed config built from ``options`` (validated there)."""
        return coerce(get(self.method).config, self.options, where=f"{self.method} option")

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else get(self.method).learning_rate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recipe(self) -> dict[str, Any]:
        """What determines the trained weights (for lineage and for refusing to resume a run
        with a different recipe): everything but names and bookkeeping."""
        skip = {"out", "run_dir", "log_every", "keep_checkpoints", "forgetting"}
        d = {k: v for k, v in self.to_dict().items() if k not in skip}
        d["learning_rate"] = self.lr
        d["options"] = dataclasses.asdict(self.method_config())
        return d

    def fingerprint(self) -> str:
        return digest(self.recipe())

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: dict[str, Any], base_dir: Path | None = None) -> "TuneConfig":
        if not isinstance(data, dict):
            raise InvalidOptions("a tuning recipe must be a mapping of settings")
        data = dict(data)
        methods = load_all()
        method = str(data.get("method", cls.method))
        options = dict(data.pop("options", None) or {})
        for name in list(data):
            if name in methods:
                section = data.pop(name)
                if name == method:
                    if not isinstance(section, dict):
                        raise InvalidOptions(f"{name}: expected a mapping of {name} settings")
                    options.update(section)
        cfg = coerce(cls, data, where="recipe key")
        cfg.options = options
        if base_dir is not None:
            for key in ("data", "eval", "run_dir"):
                value = getattr(cfg, key)
                if value and not Path(value).expanduser().is_absolute():
                    setattr(cfg, key, str((base_dir / value).resolve()))
            if cfg.base and (base_dir / cfg.base).exists():
                cfg.base = str((base_dir / cfg.base).resolve())
        cfg.method_config()  # refuse unknown method settings now, not after loading a model
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "TuneConfig":
        data, base_dir = read_yaml(path, "recipe")
        return cls.from_mapping(data, base_dir=base_dir)


def read_yaml(path: str | Path, what: str) -> tuple[Any, Path]:
    """A recipe or config file's YAML (``{}`` when empty) and the folder its relative paths
    start from; a bad file is one line naming it (and the line of a YAML error)."""
    import yaml

    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise InvalidOptions(f"cannot read {what} {p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise InvalidOptions(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return data or {}, p.resolve().parent


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidOptions(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def coerce(cls: type, values: dict[str, Any], where: str = "setting"):
    """Build dataclass ``cls`` from ``values`` whose items may be strings (CLI ``KEY=VALUE``)
    or YAML scalars; unknown names and unconvertible values are one-line errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InvalidOptions(f"unknown {where} {unknown[0]!r}; known: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], k) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InvalidOptions(f"{cls.__name__}: {e}") from None


def _convert(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(value, args[0], name)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (str,)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise InvalidOptions(f"{name}: expected a list (got {value!r})")
        out = [_convert(x.strip() if isinstance(x, str) else x, inner, name) for x in items]
        return out if origin is list else tuple(out)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise InvalidOptions(f"{name}: expected a mapping (got {value!r})")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise InvalidOptions(f"{name}: expected true or false (got {value!r})")
    if hint in (int, float):
        if isinstance(value, bool):
            raise InvalidOptions(f"{name}: expected a number (got {value!r})")
        try:
            number = float(value) if hint is float else int(str(value), 10) if isinstance(value, str) else value
        except ValueError:
            raise InvalidOptions(f"{name}: expected {'a number' if hint is float else 'an integer'} "
                                 f"(got {value!r})") from None
        if hint is int and (not isinstance(number, int) and not float(number).is_integer()):
            raise InvalidOptions(f"{name}: expected an integer (got {value!r})")
        return hint(number)
    if hint is str:
        if isinstance(value, (dict, list)):
            raise InvalidOptions(f"{name}: expected text (got {value!r})")
        return str(value)
    return value
