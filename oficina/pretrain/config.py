"""A pretraining recipe: the architecture (named as ``oficina show`` names it), the objective's
settings and the training loop's settings, from one YAML file::

    family: llama              # llama | bert | t5  (families.py)
    layers: 4
    heads: 4
    kv_heads: 2
    embedding_length: 128
    feed_forward_length: 384
    context_length: 256
    vocab_size: 2048           # a tokenizer of this size is trained on the corpus unless one is given
    train: {max_steps: 600, batch_size: 16, max_length: 128, learning_rate: 3e-3}
    objective: {}              # bert: mask_probability; t5: noise_density, mean_span_length

Everything that cannot work is refused here, before any compute, naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidOptions
from ..tuning.config import TuneConfig, coerce, digest, read_yaml
from .families import FAMILIES, family


@dataclass
class ArchConfig:
    family: str = "llama"
    layers: int = 4
    heads: int = 4
    kv_heads: int | None = None               # default: heads (grouped-query attention when fewer)
    embedding_length: int = 128
    feed_forward_length: int | None = None    # the MLP's inner size; default 4 x embedding_length
    context_length: int = 256
    vocab_size: int | None = None             # default: the tokenizer's size
    decoder_layers: int | None = None         # t5 only; default: layers
    rope_theta: float | None = None           # llama only (RoPE base); default 10000
    tie_embeddings: bool = True               # output head shares the token embeddings
    dropout: float = 0.0

    def __post_init__(self) -> None:
        fam = family(self.family)
        for name in ("layers", "heads", "embedding_length", "context_length"):
            _at_least(name, getattr(self, name), 2 if name == "context_length" else 1)
        for name in ("kv_heads", "feed_forward_length", "vocab_size", "decoder_layers"):
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        for name, default in fam.extra.items():  # settings only some families have
            if getattr(self, name) is None:
                setattr(self, name, default(self))
        for name in sorted({n for f in FAMILIES.values() for n in f.extra}):
            if name not in fam.extra and getattr(self, name) is not None:
                owners = [f.name for f in FAMILIES.values() if name in f.extra]
                raise InvalidOptions(f"{name}: only {' and '.join(owners)} models have it "
                                     f"(this is a {self.family} config)")
        if self.kv_heads is None:
            self.kv_heads = self.heads
        if self.feed_forward_length is None:
            self.feed_forward_length = 4 * self.embedding_length  # Vaswani et al. 2017, §3.3
        if self.embedding_length % self.heads:
            raise InvalidOptions(f"heads: embedding_length {self.embedding_length} is not divisible by "
                                 f"heads {self.heads} (every head gets embedding_length / heads dimensions)")
        if self.kv_heads > self.heads or self.heads % self.kv_heads:
            raise InvalidOptions(f"kv_heads: heads {self.heads} is not a multiple of kv_heads {self.kv_heads} "
                                 f"(each key/value head serves the same number of query heads; "
                                 f"Ainslie et al. 2023, GQA)")
        if self.kv_heads != self.heads and not fam.grouped_kv:
            raise InvalidOptions(f"kv_heads: {self.family} attention has one key/value head per query "
                                 f"head; set kv_heads to {self.heads} or leave it out")
        if not 0 <= self.dropout < 1:
            raise InvalidOptions(f"dropout must be in [0, 1) (got {self.dropout})")
        fam.check(self)

    @property
    def head_dim(self) -> int:
        return self.embedding_length // self.heads

    @property
    def kind(self) -> str:
        return family(self.family).kind

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The loop's settings a pretraining recipe may set under ``train:`` (TuneConfig's names; the
# rest of TuneConfig is about fine-tuning data and does not apply).
LOOP_FIELDS = ("learning_rate", "schedule", "warmup_steps", "epochs", "max_steps", "batch_size",
               "grad_accum", "max_length", "precision", "seed", "weight_decay", "max_grad_norm",
               "val_split", "eval", "eval_every", "save_every", "log_every", "keep_checkpoints",
               "run_dir", "gradient_checkpointing")

# From-scratch defaults: a higher rate than fine-tuning with warmup, weight decay 0.1 as in
# GPT-3 (Brown et al. 2020, appendix B) and nanoGPT.
SAMPLES = ("The", "Once upon a time")
TRAIN_DEFAULTS: dict[str, Any] = {"learning_rate": 1e-3, "warmup_steps": 20, "weight_decay": 0.1,
                                  "batch_size": 16, "schedule": "cosine", "val_split": 0.1}


@dataclass
class PretrainConfig:
    arch: ArchConfig
    train: TuneConfig                         # only LOOP_FIELDS matter; method is "pretrain"
    objective: Any = None                     # the family objective's settings (objectives.py)
    tokenizer: str | None = None              # a folder with tokenizer.json or a registry model
    eval_tokens: int = 65536                  # validation tokens read at each evaluation
    samples: list[str] = field(default_factory=lambda: list(SAMPLES))  # prompts shown after training

    def __post_init__(self) -> None:
        # here, not at the top: objectives.py loads torch, and the CLI reads this config's flags
        from .objectives import objective

        obj = objective(family(self.arch.family).objective)
        if self.objective is None:
            self.objective = obj.config()
        if self.train.max_length > self.arch.context_length:
            raise InvalidOptions(f"train.max_length {self.train.max_length} is longer than context_length "
                                 f"{self.arch.context_length} ({family(self.arch.family).positions})")
        _at_least("eval_tokens", self.eval_tokens, 1)

    def fingerprint(self, *extra: Any) -> str:
        """What determines the trained weights (resuming refuses a different one)."""
        skip = {"out", "run_dir", "log_every", "keep_checkpoints", "forgetting", "base", "data"}
        train = {k: v for k, v in self.train.to_dict().items() if k in LOOP_FIELDS and k not in skip}
        blob = [self.arch.to_dict(), dataclasses.asdict(self.objective), train, *extra]
        return digest(blob)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: dict[str, Any], base_dir: Path | None = None) -> PretrainConfig:
        from .objectives import objective  # torch (see __post_init__)

        if not isinstance(data, dict):
            raise InvalidOptions("a pretraining config must be a mapping of settings")
        data = dict(data)
        train = _section(data.pop("train", None), "train")
        objective_settings = _section(data.pop("objective", None), "objective")
        recipe = {k: data.pop(k) for k in ("tokenizer", "eval_tokens", "samples") if k in data}
        arch = coerce(ArchConfig, data, where="config field")
        unknown = sorted(set(train) - set(LOOP_FIELDS))
        if unknown:
            raise InvalidOptions(f"unknown train setting {unknown[0]!r}; known: {', '.join(LOOP_FIELDS)}")
        loop = {**TRAIN_DEFAULTS, "max_length": arch.context_length, **train}
        loop_cfg = coerce(TuneConfig, loop, where="train setting")
        loop_cfg = dataclasses.replace(loop_cfg, method="pretrain", forgetting=False)
        obj = objective(family(arch.family).objective)
        settings = coerce(obj.config, objective_settings, where=f"{obj.name} objective setting")
        extra = coerce(_Recipe, recipe, where="config field")
        if base_dir is not None:  # paths in a file are relative to the file
            for key in ("eval", "run_dir"):
                value = getattr(loop_cfg, key)
                if value and not Path(value).expanduser().is_absolute():
                    setattr(loop_cfg, key, str((base_dir / value).resolve()))
            if extra.tokenizer and (base_dir / extra.tokenizer).exists():  # else a registry name
                extra.tokenizer = str((base_dir / extra.tokenizer).resolve())
        return cls(arch, loop_cfg, settings, extra.tokenizer, extra.eval_tokens, extra.samples)

    @classmethod
    def from_file(cls, path: str | Path) -> PretrainConfig:
        data, base_dir = read_yaml(path, "config")
        try:
            return cls.from_mapping(data, base_dir=base_dir)
        except InvalidOptions as e:
            raise InvalidOptions(f"{Path(path).expanduser().name}: {e}") from None

    def with_overrides(self, train: dict[str, Any] | None = None, **recipe: Any) -> PretrainConfig:
        """The same recipe with loop settings (``train``, TuneConfig names) and recipe fields
        replaced; values are converted and validated as in a file."""
        loop = self.train
        if train:
            unknown = sorted(set(train) - set(LOOP_FIELDS))
            if unknown:
                raise InvalidOptions(f"unknown train setting {unknown[0]!r}")
            changes = coerce(TuneConfig, train, where="train setting")
            loop = dataclasses.replace(loop, **{k: getattr(changes, k) for k in train})
        given = {k: v for k, v in recipe.items() if v is not None}
        return dataclasses.replace(self, train=loop, **given)


@dataclass
class _Recipe:
    tokenizer: str | None = None
    eval_tokens: int = 65536
    samples: list[str] = field(default_factory=lambda: list(SAMPLES))


def _section(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidOptions(f"{name}: expected a mapping of {name} settings (got {value!r})")
    return dict(value)


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise InvalidOptions(f"{name} must be at least {low} (got {value})")
