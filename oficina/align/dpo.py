"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model", eq. 7):

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)) ] )

pi is the model being trained, ref the same model before training, y_w the chosen and y_l the
rejected answer; beta says how far pi may move from ref. No reward model and no sampling: the
preference is learned straight from the pairs.

Our own loss on the shared loop, not TRL's ``DPOTrainer``: TRL would bring a second training
loop (transformers' Trainer) with its own checkpoints, resume and logging, which the house rule
"one loop, not two" forbids, and a dependency for a loss that is five lines. The reference
log-probabilities are computed once before training (as TRL's ``precompute_ref_log_probs``),
so no second copy of the model stays in memory; with LoRA the starting model *is* the reference
(B = 0), with full training it is the weights before the first step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidOptions
from ..registry.registry import Registry
from ..report import reporter
from ..tuning.config import TuneConfig
from ..tuning.session import pad_id
from ..tuning.tasks import TASKS
from . import common, pairs

# Learning rates when the recipe gives none: TRL's DPOConfig default (1e-6) for full training;
# LoRA and the other small methods move fewer weights and need more.
LEARNING_RATES = {"full": 1e-6, "*": 5e-5}


@dataclass
class DPOConfig:
    beta: float = 0.1  # the paper's experiments use 0.1 to 0.5

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise InvalidOptions(f"beta must be positive (got {self.beta})")


def loss_fn(settings: DPOConfig):
    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        logps = pairs.sequence_logps(model, batch)                    # [2B]: chosen rows, then rejected
        ref = batch["ref_logps"]
        n = len(logps) // 2
        margin = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])        # [B]
        return -F.logsigmoid(settings.beta * margin).mean()

    return loss


def evaluator(batches: pairs.PairBatches, settings: DPOConfig):
    """Held-out pairs: the DPO loss; ``accuracy``, how often the model gives the chosen answer a
    higher probability than the rejected one (meaningful before training too); and
    ``reward_accuracy``, how often DPO's implicit reward beta*log(pi/ref) ranks them right (50%
    before training, when every pair ties)."""
    loss = loss_fn(settings)

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        total, right, reward_right, count = 0.0, 0, 0.0, 0
        for b in batches.epoch(0):
            inputs = {k: v.to(device) for k, v in b.inputs.items()}
            logps = pairs.sequence_logps(model, inputs)
            ref = inputs["ref_logps"]
            n = len(logps) // 2
            total += float(loss(model, inputs)) * n
            right += int((logps[:n] > logps[n:]).sum())
            gap = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
            reward_right += float((gap > 0).sum() + 0.5 * (gap == 0).sum())  # a tie is a coin flip
            count += n
        return {"loss": total / max(count, 1), "accuracy": right / max(count, 1),
                "reward_accuracy": reward_right / max(count, 1)}

    return evaluate


def dpo(cfg: TuneConfig, settings: DPOConfig | None = None, registry: Registry | None = None,
        resume: bool = False) -> common.AlignResult:
    settings = settings or DPOConfig()
    cfg = common.with_lr(cfg, LEARNING_RATES)
    train_ds, eval_ds = common.read_pairs(cfg)
    task = TASKS["causal"]
    run = common.start(cfg, "dpo", task, (), registry)
    ctx = common.context(run.base, cfg)
    train_pairs = pairs.encode(train_ds, ctx)
    eval_pairs = pairs.encode(eval_ds, ctx) if eval_ds else []
    pad = pad_id(run.base.tokenizer)
    model = run.model
    with reporter().progress("reference log-probabilities", None), common.autocast(cfg, model):
        ref_train = pairs.score_pairs(model, train_pairs, cfg.batch_size, pad, pairs.sequence_logps)
        ref_eval = pairs.score_pairs(model, eval_pairs, cfg.batch_size, pad, pairs.sequence_logps)
    batches = pairs.PairBatches(train_pairs, cfg.batch_size, pad, cfg.seed, extra={"ref_logps": ref_train},
                                rank=run.rank, world=run.world)
    evaluate = evaluator(pairs.PairBatches(eval_pairs, cfg.batch_size, pad, shuffle=False,
                                           extra={"ref_logps": ref_eval}), settings) if eval_pairs else None
    before = common.evaluate_now(evaluate, model, cfg)
    reporter().note(f"dpo ({run.method.name}, beta {settings.beta:g}) on {run.base.ref}: "
                    f"{run.trainable:,} of {run.parameters:,} parameters train; {len(train_pairs)} "
                    f"training and {len(eval_pairs)} held-out pairs"
                    + (f"; held-out preference accuracy before {before['accuracy']:.1%}" if before else ""))
    result = common.train(run, cfg, settings, batches, loss_fn(settings), evaluate, resume, train_ds, eval_ds, "dpo")
    r = common.result(run, "dpo", cfg, result, before, dataclasses.asdict(settings))
    if run.rank == 0:
        extra = {"dpo": dataclasses.asdict(settings),
                 "preference_accuracy": {"before": before.get("accuracy"), "after": r.after.get("accuracy")}}
        common.publish(r, run, task, (), train_ds, eval_ds, extra)
    return r
