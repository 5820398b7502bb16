"""A tuning run, from recipe to registry version: open the base, read and encode the data, apply
the method, run the shared loop, save what changed and register it with its lineage (base
digest, method and hyper-parameters, data digests, final metrics). Also ``merge`` (fold LoRA-like
adapters into the base weights) and ``load_tuned`` (a tuned model in its task's class)."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import OficinaError
from ..models.loader import no_tqdm
from ..registry.registry import Entry, Registry
from ..report import reporter
from . import attach, defaults, forgetting, loop, tasks
from .batches import Batches
from .config import TuneConfig
from .method import Method, get, load_all
from .session import Base, Session, fingerprint, loop_metrics, model_for, open_base, pad_id


@dataclass
class TuneResult:
    config: TuneConfig
    method: str
    task: str
    run_dir: Path
    artifact: Path                # the saved adapter folder or model folder
    trainable: int
    parameters: int
    artifact_bytes: int
    loop: loop.Result
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    entry: Entry | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def curve(self) -> Path:
        return self.run_dir / "loss.png"


# -- the run ----------------------------------------------------------------------------------------
def tune(cfg: TuneConfig, registry: Registry | None = None, resume: bool = False) -> TuneResult:
    method = get(cfg.method)
    method_cfg = cfg.method_config()
    if not cfg.base:
        raise OficinaError("no base model: give BASE (a registry name or model folder)")
    if not cfg.data:
        raise OficinaError("no training data: give --data FILE (.jsonl, .txt or .csv)")
    run = Session.for_recipe(cfg, registry, cfg.method)
    train_ds, eval_ds = run.read(cfg)
    base = run.open_base(cfg.base)
    task, labels = _task(cfg, base, train_ds)
    ctx = tasks.Context.for_model(base.tokenizer, base.manifest, cfg.max_length, train_on=cfg.train_on,
                                  truncate=cfg.truncate, split_long=cfg.packing, labels=labels)
    train_ex = tasks.encode(train_ds, task, ctx)
    eval_ex = tasks.encode(eval_ds, task, dataclasses.replace(ctx, split_long=True)) if eval_ds else []

    model = run.load(base, task, labels)
    check_text = forgetting.general_text() if cfg.forgetting and task.name == "causal" else None
    window = min(256, (base.info.context_length or 512) // 2)  # room for virtual tokens
    ppl_before = forgetting.perplexity(model, base.tokenizer, check_text, window) if check_text else None
    model = run.prepare(cfg, base, model, method, method_cfg, task)
    trainable, total = run.trainable, run.parameters

    pad = pad_id(base.tokenizer)
    batches = Batches(train_ex, cfg.batch_size, pad, cfg.seed, group_by_length=cfg.group_by_length,
                      packing=cfg.max_length if cfg.packing and task.packable else None,
                      rank=run.rank, world=run.world)
    evaluate = _evaluator(task, Batches(eval_ex, cfg.batch_size, pad, shuffle=False)) if eval_ex else None
    cfg, chosen = resolve_defaults(cfg, method, method_cfg, len(batches), total)
    reporter().note(f"{method.name} on {base.ref} ({task.name}): {trainable:,} of {total:,} parameters "
                    f"train ({100 * trainable / total:.3g}%); {len(train_ex)} training and "
                    f"{len(eval_ex)} validation examples; run folder {run.run_dir}")
    reporter().note(f"settings: {chosen}")
    result = run.train(model, batches, cfg, task.loss, evaluate, resume,
                       fingerprint(cfg.fingerprint(), train_ds.digest, eval_ds.digest if eval_ds else None, base.id))
    ppl_after = forgetting.perplexity(model, base.tokenizer, check_text, window) if check_text else None

    out = TuneResult(cfg, method.name, task.name, run.run_dir, run.artifact(), trainable, total, 0, result,
                     ppl_before, ppl_after)
    if run.rank == 0:
        out.artifact_bytes = run.save(task, labels, out.artifact)
        out.metrics = _metrics(out)
        if cfg.out:
            out.entry = run.publish(cfg, task, out.artifact, train_ds, eval_ds, out.metrics, op="tune")
    return out


def _task(cfg: TuneConfig, base: Base, train_ds) -> tuple[tasks.Task, tuple[str, ...]]:
    """The task the recipe asks for (``auto``: what the data's shape and the model say) and,
    for classification, its labels."""
    requested = cfg.task
    if requested == "auto":
        requested = {"labelled": "classification", "pair": "seq2seq"}.get(train_ds.shape, "auto")
    task = tasks.for_model(base.info.kind, requested)
    labels = tuple(cfg.labels or train_ds.labels) if task.name == "classification" else ()
    if task.name == "classification" and len(labels) < 2:
        raise OficinaError(f"{train_ds.path}: classification needs at least two labels (found {list(labels)})")
    return task, labels


def resolve_defaults(cfg: TuneConfig, method: Method, method_cfg, batches: int,
                     parameters: int) -> tuple[TuneConfig, str]:
    """The recipe with what it left open filled in (``defaults.py``), and one line saying what
    the run uses and which values were chosen for it, for the run's header."""
    steps_per_epoch = max(1, -(-batches // cfg.grad_accum))
    auto = {}
    if cfg.epochs is None and cfg.max_steps is None:
        auto["epochs"] = defaults.epochs(steps_per_epoch)
    if cfg.learning_rate is None:
        auto["learning_rate"], why_lr = defaults.learning_rate(method, parameters)
    cfg = dataclasses.replace(cfg, **auto)
    steps = cfg.max_steps or (cfg.epochs or 1) * steps_per_epoch
    mark = lambda key: " (chosen)" if key in auto else ""
    parts = [f"{steps} optimizer steps" + (f" = {cfg.epochs} epochs{mark('epochs')} of {steps_per_epoch}"
                                           if not cfg.max_steps else ""),
             f"batch {cfg.batch_size}" + (f" x {cfg.grad_accum}" if cfg.grad_accum > 1 else ""),
             f"learning rate {cfg.lr:g}" + (f" ({why_lr})" if "learning_rate" in auto else ""),
             f"{cfg.schedule} schedule"]
    own = {k: v for k, v in dataclasses.asdict(method_cfg).items() if v is not None}
    if own:
        parts.append(f"{method.name} " + ", ".join(f"{k} {_setting(v)}" for k, v in own.items()))
    note = "; ".join(parts)
    if "epochs" in auto:
        note += (f" (epochs chosen for at least {defaults.MIN_STEPS} steps, at most {defaults.MAX_EPOCHS}; "
                 f"--epochs to set)")
    return cfg, note


def _setting(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else f"{v:g}" if isinstance(v, float) else str(v)


def _metrics(r: TuneResult) -> dict[str, Any]:
    m = {**loop_metrics(r.loop), "trainable_parameters": r.trainable, "parameters": r.parameters,
         "trainable_percent": 100 * r.trainable / max(r.parameters, 1), "artifact_bytes": r.artifact_bytes}
    m.update({f"val_{k}": v for k, v in r.loop.val.items()})
    if r.perplexity_before is not None:
        m.update(perplexity_before=r.perplexity_before, perplexity_after=r.perplexity_after)
    return m


def _evaluator(task: tasks.Task, batches: Batches):
    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        loss_sum, weight, counts = 0.0, 0, {}
        for b in batches.epoch(0):
            inputs = {k: v.to(device) for k, v in b.inputs.items()}
            n = int((inputs["labels"] != tasks.IGNORE).sum())
            loss_sum += float(task.loss(model, inputs)) * n
            weight += n
            if task.score:
                for k, v in task.score(model, inputs).items():
                    counts[k] = counts.get(k, 0.0) + v
        out = {"loss": loss_sum / max(weight, 1)}
        if counts.get("count"):
            out["accuracy"] = counts["correct"] / counts["count"]
        return out

    return evaluate


# -- using a tuned model ----------------------------------------------------------------------------
@dataclass
class Tuned:
    """A tuned registry model in its task's class, adapters applied as trained (not merged)."""

    model: nn.Module
    tokenizer: Any
    task: tasks.Task
    labels: tuple[str, ...]
    entry: Entry

    @torch.no_grad()
    def classify(self, texts: list[str], batch_size: int = 32) -> list[str]:
        if self.task.name != "classification":
            raise OficinaError(f"{self.entry.ref} is a {self.task.name} model, not a classifier")
        device = next(self.model.parameters()).device
        out: list[str] = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s:s + batch_size], padding=True, truncation=True, return_tensors="pt")
            logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits
            out += [self.labels[i] for i in logits.argmax(-1).tolist()]
        return out


def load_tuned(name: str, registry: Registry | None = None, merge: bool = False) -> Tuned:
    reg = registry or Registry()
    base = open_base(name, reg)
    root = reg.snapshot(base.entry) / "adapters"
    found = attach.folders(root)
    task, labels = attach.task_of(found)
    if task is None:  # a whole model: its config says what it is
        labels = tuple(getattr(_hf_config(base.folder), "id2label", {}).values()) \
            if "ForSequenceClassification" in base.info.architecture else ()
        task = tasks.for_model(base.info.kind, "classification" if labels else "auto")
    model = model_for(base, task, labels)
    model = attach.attach(model, root, task, merge=merge).eval()
    return Tuned(model, base.tokenizer, task, labels, base.entry)


def _hf_config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder))


def merge(name: str, out: str | None = None, registry: Registry | None = None) -> Entry:
    """Fold the adapters of ``name`` into its base weights: a new version (of ``out``, or of
    ``name``) that is a whole model with no adapters."""
    reg = registry or Registry()
    base = open_base(name, reg)
    if not base.manifest.adapters:
        raise OficinaError(f"{base.entry.ref} has no adapters to merge")
    root = reg.snapshot(base.entry) / "adapters"
    methods = []
    for folder in attach.folders(root):
        if (folder / "adapter.gguf").exists():
            raise OficinaError(f"adapter {folder.name} of {base.entry.ref} is a GGUF LoRA; merge it with llama.cpp")
        m = get(attach.method_of_adapter(folder))
        if m.merge is None:
            raise OficinaError(f"adapter {folder.name} of {base.entry.ref} is {m.name}, which cannot be "
                               f"folded into the weights (only LoRA-like methods can: "
                               f"{', '.join(n for n, x in _methods().items() if x.merge)})")
        methods.append(m.name)
    task, labels = attach.task_of(attach.folders(root))
    task = task or tasks.for_model(base.info.kind)
    model = attach.attach(model_for(base, task, labels), root, task, merge=True)
    work = reg.home / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        with no_tqdm(), reporter().progress("writing merged weights", None):
            model.save_pretrained(tmp, safe_serialization=True)
            base.tokenizer.save_pretrained(tmp)
        return reg.publish(out or base.entry.name, Path(tmp), parent=base.entry.ref, inherit=base.manifest,
                           details={"tuning": {"merged": methods}},
                           producer={"op": "merge", "from": base.entry.ref, "adapters": methods,
                                     **({"note": "qlora: merged into the dequantized base"}
                                        if "qlora" in methods else {})},
                           metrics=dict(base.entry.metrics))


def _methods():
    return load_all()
