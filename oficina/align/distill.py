"""Logit distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"): the student learns the teacher's whole next-token distribution, softened by a
temperature T, not only the one right token:

    loss = alpha * T^2 * KL( softmax(teacher / T) || softmax(student / T) ) + (1 - alpha) * CE(student, data)

(the T^2 keeps the soft term's gradients the same size whatever T, §2 of the paper). Both models
read the same token ids, so they must share a tokenizer; a student given as a pretraining config
is built with the teacher's. The student is a registry model, a folder, or a config (a new model);
the data is any causal tuning file (text, instruction, chat), encoded as ``oficina tune`` does.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..errors import InvalidOptions, OficinaError
from ..models.loader import device
from ..pretrain.config import PretrainConfig
from ..pretrain.families import family
from ..pretrain.run import check_vocab, save_model
from ..pretrain.size import build
from ..pretrain.tokenizer import special_ids
from ..registry.registry import Entry, Registry
from ..report import reporter
from ..tuning import loop, tasks
from ..tuning.batches import Batches
from ..tuning.config import TuneConfig
from ..tuning.session import Base, Session, data_lineage, eval_lineage, fingerprint, loop_metrics, pad_id
from ..tuning.tasks import IGNORE, unwrap
from .common import evaluate_now

LEARNING_RATE = 1e-3  # a small student trains almost from scratch; pass --lr for a pretrained one


@dataclass
class DistillConfig:
    temperature: float = 2.0   # Hinton et al. try 1..20; 2 is the usual choice for language models
    alpha: float = 0.5         # weight of the teacher's soft targets against the data's hard ones

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InvalidOptions(f"temperature must be positive (got {self.temperature})")
        if not 0 <= self.alpha <= 1:
            raise InvalidOptions(f"alpha must be in [0, 1] (got {self.alpha})")


@dataclass
class Side:
    """One model in the side-by-side report."""

    ref: str
    parameters: int
    weights: int               # bytes as fp32
    perplexity: float          # on the held-out data
    tokens_per_s: float        # forward pass over the held-out data
    kl: float | None = None    # KL(teacher || model) per token, T = 1


@dataclass
class DistillResult:
    config: TuneConfig
    settings: DistillConfig
    run_dir: Path
    folder: Path
    model: nn.Module           # the trained student, in memory
    loop: loop.Result
    teacher: Side
    student: Side
    student_before: Side
    entry: Entry | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def curve(self) -> Path:
        return self.run_dir / "loss.png"


# -- the loss -------------------------------------------------------------------------------------
def _predicting(batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE                        # positions whose next token is trained
    inputs = {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}
    return keep, labels[:, 1:][keep[:, :-1]], inputs


def logits_at(model: nn.Module, inputs: dict, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the kept positions only. [K, V]"""
    import inspect

    if "logits_to_keep" in inspect.signature(unwrap(model).forward).parameters:
        return model(**inputs, logits_to_keep=keep).logits
    return model(**inputs).logits[keep]


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, mean over positions,
    over the vocabulary both share (padded embedding rows beyond it are ignored)."""
    v = min(student.shape[-1], teacher.shape[-1])
    s = F.log_softmax(student[:, :v].float() / temperature, -1)
    t = F.log_softmax(teacher[:, :v].float() / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def loss_fn(teacher: nn.Module, settings: DistillConfig):
    T, alpha = settings.temperature, settings.alpha

    def loss(student: nn.Module, batch: dict) -> torch.Tensor:
        keep, target, inputs = _predicting(batch)
        s = logits_at(student, inputs, keep)                      # [K, Vs]
        with torch.no_grad():
            t = logits_at(teacher, inputs, keep)                  # [K, Vt]
        return alpha * T * T * soft_kl(s, t, T) + (1 - alpha) * F.cross_entropy(s.float(), target)

    return loss


def evaluator(teacher: nn.Module, batches: Batches):
    """Held-out: the student's own loss and perplexity, and its KL from the teacher (T = 1)."""
    def evaluate(student: nn.Module) -> dict[str, float]:
        device = next(student.parameters()).device
        ce, kl, count = 0.0, 0.0, 0
        for b in batches.epoch(0):
            keep, target, inputs = _predicting({k: v.to(device) for k, v in b.inputs.items()})
            s = logits_at(student, inputs, keep)
            t = logits_at(teacher, inputs, keep)
            n = len(target)
            ce += float(F.cross_entropy(s.float(), target)) * n
            kl += float(soft_kl(s, t, 1.0)) * n
            count += n
        loss = ce / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "kl": kl / max(count, 1)}

    return evaluate


@torch.no_grad()
def measure(model: nn.Module, batches: Batches) -> tuple[float, float]:
    """(perplexity, tokens per second of the forward pass) on ``batches``."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    loss, count, tokens, seconds = 0.0, 0, 0, 0.0
    for b in batches.epoch(0):
        keep, target, inputs = _predicting({k: v.to(device) for k, v in b.inputs.items()})
        t0 = time.perf_counter()
        logits = logits_at(model, inputs, keep)
        seconds += time.perf_counter() - t0
        loss += float(F.cross_entropy(logits.float(), target)) * len(target)
        count += len(target)
        tokens += b.tokens
    model.train(was)
    return math.exp(min(loss / max(count, 1), 50.0)), tokens / seconds if seconds else 0.0


# -- the run --------------------------------------------------------------------------------------
def same_tokenizer(teacher, student) -> str | None:
    """None when both map every token to the same id; else what differs, in words."""
    a, b = teacher.get_vocab(), student.get_vocab()
    if a == b:
        return None
    differ = next((t for t in sorted(set(a) | set(b)) if a.get(t) != b.get(t)), None)
    return (f"{len(a):,} vs {len(b):,} tokens; {differ!r} is "
            f"{a.get(differ, 'absent')} in the teacher and {b.get(differ, 'absent')} in the student")


def _open(run: Session, ref: str, task) -> tuple[Base, nn.Module]:
    base = run.open_base(ref)
    if base.info.kind != "decoder-only":
        raise OficinaError(f"{base.ref} is an {base.info.kind} model; distillation here is for "
                           f"decoder-only (causal) models")
    return base, run.load(base, task)


def _student(run: Session, student: str, teacher: Base, cfg: TuneConfig, task):
    """(model, its Base or None for a config, its context length, its lineage)."""
    tok = teacher.tokenizer
    spath = Path(student).expanduser()
    if spath.is_file() and spath.suffix.lower() in (".yaml", ".yml"):
        arch_cfg, model = _student_from_config(spath, tok, cfg.max_length, cfg.seed)
        return model, None, arch_cfg.arch.context_length, {"config": str(spath.resolve()),
                                                           "architecture": arch_cfg.arch.to_dict()}
    base, model = _open(run, student, task)
    differ = same_tokenizer(tok, base.tokenizer)
    if differ:
        raise OficinaError(f"teacher {teacher.ref} and student {base.ref} do not share a "
                           f"tokenizer ({differ}): logit distillation compares the two models' "
                           f"distributions token by token over one vocabulary; give a student with the "
                           f"teacher's tokenizer, or a student config (built with the teacher's tokenizer)")
    return model, base, base.info.context_length, {"ref": base.lineage_ref, "digest": base.id}


def _student_from_config(path: Path, teacher_tok, max_length: int, seed: int):
    cfg = PretrainConfig.from_file(path)
    fam = family(cfg.arch.family)
    if fam.kind != "decoder-only":
        raise InvalidOptions(f"{path.name}: family {fam.name} is {fam.kind}; a distilled student here is "
                             f"decoder-only (family: llama)")
    cfg = check_vocab(cfg, teacher_tok, "the teacher's tokenizer, which a student config is built with")
    if max_length > cfg.arch.context_length:
        raise InvalidOptions(f"max_length {max_length} is longer than the student's context_length "
                             f"{cfg.arch.context_length}")
    torch.manual_seed(seed)
    model = build(fam.hf_config(cfg.arch, special_ids(teacher_tok)), fam.model_class).to(device())
    return cfg, model


def distill(cfg: TuneConfig, student: str, settings: DistillConfig | None = None,
            registry: Registry | None = None, resume: bool = False) -> DistillResult:
    """Distill teacher ``cfg.base`` into ``student`` (a registry model, a folder, or a pretraining
    config file) on ``cfg.data``; register the student as ``cfg.out``."""
    settings = settings or DistillConfig()
    if not cfg.base:
        raise OficinaError("no teacher: give TEACHER (a registry name or model folder)")
    if not cfg.data:
        raise OficinaError("no data: give --data FILE (.txt, .jsonl or .csv)")
    cfg = dataclasses.replace(cfg, learning_rate=cfg.learning_rate or LEARNING_RATE, method="distill")
    run = Session.for_recipe(cfg, registry, "distill")
    train_ds, eval_ds = run.read(cfg)
    task = tasks.TASKS["causal"]
    teacher_base, teacher = _open(run, cfg.base, task)
    teacher.eval().requires_grad_(False)
    tok = teacher_base.tokenizer
    model, student_base, context_length, student_from = _student(run, student, teacher_base, cfg, task)
    model.requires_grad_(True)
    # prompts as `oficina run` will render them for the student: the manifest it is published under
    runs_as = student_base if student_base is not None and student_base.entry else teacher_base
    ctx = tasks.Context.for_model(tok, runs_as.manifest, cfg.max_length, train_on=cfg.train_on,
                                  truncate=cfg.truncate, split_long=True)
    train_ex = tasks.encode(train_ds, task, ctx)
    eval_ex = tasks.encode(eval_ds, task, ctx) if eval_ds else []
    pad = pad_id(tok)
    batches = Batches(train_ex, cfg.batch_size, pad, cfg.seed, group_by_length=cfg.group_by_length,
                      packing=cfg.max_length if cfg.packing else None, rank=run.rank, world=run.world)
    eval_batches = Batches(eval_ex, cfg.batch_size, pad, shuffle=False)
    if not eval_ex:
        raise OficinaError(f"{train_ds.path}: no held-out examples to compare teacher and student on; "
                           f"give --eval FILE or raise --val-split")
    evaluate = evaluator(teacher, eval_batches)
    before = evaluate_now(evaluate, model)
    student_name = cfg.out or (student_base.ref if student_base else Path(student).expanduser().name)
    student_before = Side(student_name, sum(p.numel() for p in model.parameters()), 0,
                          before["perplexity"], 0.0, before["kl"])
    reporter().note(f"distilling {teacher_base.ref} ({_count(teacher)} parameters) into {student_name} "
                    f"({_count(model)}): T {settings.temperature:g}, alpha {settings.alpha:g}; "
                    f"{len(train_ex)} training and {len(eval_ex)} held-out examples")
    skip = {"out", "run_dir", "log_every", "keep_checkpoints", "forgetting", "options"}
    result = run.train(model, batches, cfg, loss_fn(teacher, settings), evaluate, resume, label="distill",
                       fingerprint=fingerprint({k: v for k, v in cfg.to_dict().items() if k not in skip},
                                               dataclasses.asdict(settings), train_ds.digest,
                                               eval_ds.digest if eval_ds else None, teacher_base.id, student_from))
    after = result.val or evaluate_now(evaluate, model)
    teacher_side = _side(teacher_base.ref, teacher, 0.0, eval_batches)
    student_side = _side(student_name, model, after.get("kl"), eval_batches)
    student_before.weights = student_side.weights
    out = DistillResult(cfg, settings, run.run_dir, run.run_dir / "model", model, result, teacher_side,
                        student_side, student_before)
    if run.rank == 0:
        save_model(model, tok, context_length, out.folder)
        out.metrics = _metrics(out)
        if cfg.out:
            out.entry = _publish(run, out, teacher_base, student_base, student_from, train_ds, eval_ds)
    return out


def _side(ref: str, m: nn.Module, kl: float | None, batches: Batches) -> Side:
    n = sum(p.numel() for p in m.parameters())
    ppl, speed = measure(m, batches)
    return Side(ref, n, 4 * n, ppl, speed, kl)


def _publish(run: Session, out: DistillResult, teacher: Base, student: Base | None, student_from: dict,
             train_ds, eval_ds) -> Entry:
    cfg = out.config
    producer = {"op": "distill", "teacher": {"ref": teacher.lineage_ref, "digest": teacher.id},
                "student": student_from, "distill": dataclasses.asdict(out.settings),
                "hyperparameters": {k: v for k, v in cfg.to_dict().items()
                                    if k not in ("options", "out", "run_dir", "base", "data", "eval")},
                "data": {"train": data_lineage(train_ds), "eval": eval_lineage(cfg, eval_ds)},
                "oficina": __version__}
    parent = student.entry.ref if student and student.entry else (teacher.entry.ref if teacher.entry else None)
    return run.reg.publish(cfg.out, out.folder, parent=parent, producer=producer, metrics=out.metrics)


def _metrics(r: DistillResult) -> dict[str, Any]:
    return {**loop_metrics(r.loop),
            "parameters": r.student.parameters, "teacher_parameters": r.teacher.parameters,
            "val_perplexity": r.student.perplexity, "val_perplexity_before": r.student_before.perplexity,
            "teacher_val_perplexity": r.teacher.perplexity, "val_kl": r.student.kl,
            "val_kl_before": r.student_before.kl, "forward_tokens_per_s": round(r.student.tokens_per_s, 1),
            "teacher_forward_tokens_per_s": round(r.teacher.tokens_per_s, 1)}


def _count(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"

