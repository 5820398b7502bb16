"""What DPO and reward training share with a tuning run, taken from ``tuning.run`` rather than
copied: open the base (a registry model, tuned or not, or a folder; earlier adapters folded in),
apply a tuning method from ``METHODS`` (full, LoRA, ...), save what changed and register it with
its lineage. Only the loss, the batches and the lineage's ``op`` differ."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import OficinaError
from ..registry.registry import Entry, Registry
from ..tuning import attach, data, tasks
from ..tuning.config import TuneConfig
from ..tuning.method import Method, get
from ..tuning.run import Base, base_id, register, save_artifact, slug, model_for, open_base
from . import pairs

# prompt and prefix tuning add virtual tokens in front of every sequence, which shifts the
# positions the answer log-probabilities are read from; the others change weights only.
NO_VIRTUAL = ("prompt", "prefix")


@dataclass
class Opened:
    base: Base
    model: nn.Module
    method: Method
    trainable: int
    parameters: int


@dataclass
class AlignResult:
    op: str                       # "dpo" | "reward"
    config: TuneConfig
    method: str
    run_dir: Path
    artifact: Path
    trainable: int
    parameters: int
    loop: loop.Result
    before: dict[str, float]      # held-out metrics of the starting model
    after: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)
    entry: Entry | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def curve(self) -> Path:
        return self.run_dir / "loss.png"


def with_lr(cfg: TuneConfig, defaults: dict[str, float]) -> TuneConfig:
    """The recipe with its learning rate resolved (so the lineage records the one used)."""
    if cfg.learning_rate is not None:
        return cfg
    return dataclasses.replace(cfg, learning_rate=defaults.get(cfg.method, defaults["*"]))


def read_pairs(cfg: TuneConfig) -> tuple[data.Dataset, data.Dataset | None]:
    if not cfg.data:
        raise OficinaError("no preference data: give --data FILE.jsonl with prompt, chosen, rejected")
    train = pairs.read(cfg.data)
    if cfg.eval:
        return train, pairs.read(cfg.eval)
    return data.split(train, cfg.val_split, cfg.seed)


def open_model(cfg: TuneConfig, task: tasks.Task, labels: tuple[str, ...], reg: Registry) -> Opened:
    if not cfg.base:
        raise OficinaError("no base model: give BASE (a registry name or model folder)")
    method = get(cfg.method)
    if method.name in NO_VIRTUAL:
        raise OficinaError(f"{method.name} tuning adds virtual tokens and cannot be used here; use one of "
                           f"{', '.join(m for m in _methods() if m not in NO_VIRTUAL)}")
    method_cfg = cfg.method_config()
    base = open_base(cfg.base, reg)
    if base.info.kind != "decoder-only":
        raise OficinaError(f"{base.ref} is an {base.info.kind} model; preference training here needs a "
                           f"decoder-only (causal) model")
    model = model_for(base, task, labels)
    if base.manifest and base.manifest.adapters:
        model = attach.attach(model, reg.snapshot(base.entry) / "adapters", task, merge=True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    torch.manual_seed(cfg.seed)
    model = method.apply(model, method_cfg, task)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Opened(base, model, method, trainable, sum(p.numel() for p in model.parameters()))


def context(base: Base, cfg: TuneConfig) -> tasks.Context:
    """How prompts are rendered: as ``oficina run`` renders them for this model."""
    return tasks.Context(base.tokenizer, cfg.max_length, "answers", cfg.truncate,
                         system=base.manifest.system if base.manifest else None,
                         messages=tuple(base.manifest.messages) if base.manifest else ())


def run_dir(cfg: TuneConfig, reg: Registry, op: str) -> Path:
    d = Path(cfg.run_dir).expanduser() if cfg.run_dir else reg.home / "runs" / slug(
        cfg.out or f"{Path(cfg.base).name}-{op}")
    d.mkdir(parents=True, exist_ok=True)
    return d


def fingerprint(cfg: TuneConfig, settings: Any, train: data.Dataset, eval_: data.Dataset | None, base: Base) -> str:
    blob = [cfg.fingerprint(), dataclasses.asdict(settings), train.digest,
            eval_.digest if eval_ is not None else None, base_id(base)]
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def publish(r: AlignResult, opened: Opened, task: tasks.Task, labels: tuple[str, ...], reg: Registry,
            train: data.Dataset, eval_: data.Dataset | None, extra: dict[str, Any]) -> None:
    """Save what changed (an adapter, or a whole model) and register it as a tuning run does,
    with ``op`` and ``extra`` in its lineage."""
    from ..models.loader import no_tqdm

    with no_tqdm():
        save_artifact(opened.model, opened.method, opened.base, task, labels, r.artifact)
    if r.config.out:
        r.entry = register(reg, r.config, opened.base, opened.method, task, r.artifact, train, eval_,
                           r.metrics, op=r.op, extra=extra)


def metrics(r: AlignResult) -> dict[str, Any]:
    lp = r.loop
    m = {"train_loss": lp.train_loss, "steps": lp.steps, "epochs": round(lp.epochs, 3), "tokens": lp.tokens,
         "tokens_per_s": round(lp.tokens_per_s, 1), "train_seconds": round(lp.seconds, 2),
         "wall_seconds": round(lp.wall_seconds, 2), "peak_memory": lp.peak_memory,
         "trainable_parameters": r.trainable, "parameters": r.parameters}
    m.update({f"val_{k}_before": v for k, v in r.before.items()})
    m.update({f"val_{k}": v for k, v in r.after.items()})
    return m


def evaluate_now(evaluate, model: nn.Module) -> dict[str, float]:
    if evaluate is None:
        return {}
    was = model.training
    model.eval()
    with torch.no_grad():
        out = evaluate(model)
    model.train(was)
    return out


def _methods():
    from ..tuning.method import load_all

    return load_all()
