"""What DPO and reward training add to a training session (``tuning.session``): preference
pairs read and split, a decoder-only base opened (earlier adapters folded in, a prompt/prefix
adapter refused) with a weight-changing method applied and the same fast paths as ``tune``,
and what changed saved and published with its lineage. Only the loss, the batches and the
lineage's ``op`` differ between the two."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import OficinaError
from ..registry.registry import Entry, Registry
from ..tuning import data, loop, tasks
from ..tuning.config import TuneConfig
from ..tuning.method import get, load_all
from ..tuning.session import Base, Session, fingerprint, loop_metrics
from . import pairs

# prompt and prefix tuning add virtual tokens in front of every sequence, which shifts the
# positions the answer log-probabilities are read from; the others change weights only.
NO_VIRTUAL = ("prompt", "prefix")


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
    return Session.read(cfg, pairs.read)


def start(cfg: TuneConfig, op: str, task: tasks.Task, labels: tuple[str, ...],
          registry: Registry | None) -> Session:
    """A session with the base opened and the recipe's method applied (``run.model``)."""
    if not cfg.base:
        raise OficinaError("no base model: give BASE (a registry name or model folder)")
    method = get(cfg.method)
    if method.name in NO_VIRTUAL:
        raise OficinaError(f"{method.name} tuning adds virtual tokens and cannot be used here; use one of "
                           f"{', '.join(m for m in load_all() if m not in NO_VIRTUAL)}")
    method_cfg = cfg.method_config()
    run = Session.for_recipe(cfg, registry, op)
    base = run.open_base(cfg.base)
    if base.info.kind != "decoder-only":
        raise OficinaError(f"{base.ref} is an {base.info.kind} model; preference training here needs a "
                           f"decoder-only (causal) model")
    run.prepare(cfg, base, run.load(base, task, labels), method, method_cfg, task)
    return run


def context(base: Base, cfg: TuneConfig) -> tasks.Context:
    """How prompts are rendered: as ``oficina run`` renders them for this model."""
    return tasks.Context.for_model(base.tokenizer, base.manifest, cfg.max_length, truncate=cfg.truncate)


def train(run: Session, cfg: TuneConfig, settings: Any, batches, loss, evaluate, resume: bool,
          train_ds: data.Dataset, eval_ds: data.Dataset | None, op: str) -> loop.Result:
    return run.train(run.model, batches, cfg, loss, evaluate, resume, label=op,
                     fingerprint=fingerprint(cfg.fingerprint(), dataclasses.asdict(settings), train_ds.digest,
                                             eval_ds.digest if eval_ds is not None else None, run.base.id))


def result(run: Session, op: str, cfg: TuneConfig, lp: loop.Result, before: dict[str, float],
           settings: dict[str, Any] | None = None) -> AlignResult:
    return AlignResult(op, cfg, run.method.name, run.run_dir, run.artifact(), run.trainable, run.parameters,
                       lp, before, dict(lp.val), settings or {})


def publish(r: AlignResult, run: Session, task: tasks.Task, labels: tuple[str, ...],
            train: data.Dataset, eval_: data.Dataset | None, extra: dict[str, Any]) -> None:
    """Save what changed (an adapter, or a whole model) and publish it as a tuning run does,
    with ``op`` and ``extra`` in its lineage."""
    r.metrics = metrics(r)
    run.save(task, labels, r.artifact)
    if r.config.out:
        r.entry = run.publish(r.config, task, r.artifact, train, eval_, r.metrics, op=r.op, extra=extra)


def metrics(r: AlignResult) -> dict[str, Any]:
    m = {**loop_metrics(r.loop), "trainable_parameters": r.trainable, "parameters": r.parameters}
    m.update({f"val_{k}_before": v for k, v in r.before.items()})
    m.update({f"val_{k}": v for k, v in r.after.items()})
    return m


def evaluate_now(evaluate, model: nn.Module, cfg: TuneConfig | None = None) -> dict[str, float]:
    """``evaluate`` outside the loop, in the precision the loop evaluates in."""
    if evaluate is None:
        return {}
    was = model.training
    model.eval()
    with torch.no_grad(), autocast(cfg, model):
        out = evaluate(model)
    model.train(was)
    return out


def autocast(cfg: TuneConfig | None, model: nn.Module):
    """The loop's precision (bf16 autocast or none), for forwards run outside it: under bf16
    the frozen weights are stored in bf16 and only autocast multiplies them with fp32 inputs."""
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg and cfg.precision == "bf16"))
