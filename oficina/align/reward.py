"""A reward model: the base model with a head that reads one number off the last token of
prompt + answer (transformers' ``*ForSequenceClassification`` with one output), trained on
preference pairs with the Bradley-Terry loss -log sigmoid(r(x, y_w) - r(x, y_l)) (Ouyang et al.
2022, "Training language models to follow instructions with human feedback", eq. 1; Stiennon et
al. 2020). ``score`` ranks candidate answers with it.

How this relates to RLHF with PPO. InstructGPT's recipe is: supervised tuning, then a reward
model like this one, then PPO (Schulman et al. 2017): the model answers prompts, the reward
model scores the answers, and the policy is pushed toward higher reward minus a KL penalty for
drifting from the starting model. PPO is not offered: each of its steps generates answers with
the current policy, estimates advantages with a separate value head and clips the policy ratio,
keeping four models (policy, reference, reward, value) in the loop. That is a rollout loop, not a
loss over fixed batches, so it does not fit the one shared loop cleanly. DPO (``dpo.py``) solves
the same KL-regularised reward objective in closed form from the same pairs, which is why it is
what ``oficina dpo`` offers; the reward model stays useful for ranking (best-of-n), for filtering
data and for checking what a DPO run learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OficinaError
from ..registry.registry import Registry
from ..report import reporter
from ..tuning.batches import Row, collate
from ..tuning.config import TuneConfig
from ..tuning.run import load_tuned
from ..tuning.session import pad_id
from ..tuning.tasks import TASKS, Context
from . import common, pairs

LABELS = ("reward",)  # the head's one output, named so load_tuned knows a reward model
LEARNING_RATES = {"full": 1e-5, "*": 1e-4}


@dataclass
class RewardConfig:
    pass


def scores(model: nn.Module, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    return model(**inputs).logits[:, 0].float()                      # [N]


def loss(model: nn.Module, batch: dict) -> torch.Tensor:
    r = scores(model, batch)                                          # [2B]: chosen rows, then rejected
    n = len(r) // 2
    return -F.logsigmoid(r[:n] - r[n:]).mean()


def evaluator(batches: pairs.PairBatches):
    """Held-out pairs: the loss, ``accuracy`` (chosen scored above rejected) and the mean margin."""
    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        total, right, margin, count = 0.0, 0, 0.0, 0
        for b in batches.epoch(0):
            r = scores(model, {k: v.to(device) for k, v in b.inputs.items()})
            n = len(r) // 2
            total += float(-F.logsigmoid(r[:n] - r[n:]).sum())
            right += int((r[:n] > r[n:]).sum())
            margin += float((r[:n] - r[n:]).sum())
            count += n
        return {"loss": total / max(count, 1), "accuracy": right / max(count, 1), "margin": margin / max(count, 1)}

    return evaluate


def reward(cfg: TuneConfig, registry: Registry | None = None, resume: bool = False) -> common.AlignResult:
    cfg = common.with_lr(cfg, LEARNING_RATES)
    train_ds, eval_ds = common.read_pairs(cfg)
    task = TASKS["classification"]
    run = common.start(cfg, "reward", task, LABELS, registry)
    ctx = common.context(run.base, cfg)
    train_pairs = pairs.encode(train_ds, ctx)
    eval_pairs = pairs.encode(eval_ds, ctx) if eval_ds else []
    pad = pad_id(run.base.tokenizer)
    model = run.model
    batches = pairs.PairBatches(train_pairs, cfg.batch_size, pad, cfg.seed, rank=run.rank, world=run.world)
    evaluate = evaluator(pairs.PairBatches(eval_pairs, cfg.batch_size, pad, shuffle=False)) if eval_pairs else None
    before = common.evaluate_now(evaluate, model, cfg)
    reporter().note(f"reward model ({run.method.name}) on {run.base.ref}: {run.trainable:,} of "
                    f"{run.parameters:,} parameters train; {len(train_pairs)} training and "
                    f"{len(eval_pairs)} held-out pairs")
    result = common.train(run, cfg, RewardConfig(), batches, loss, evaluate, resume, train_ds, eval_ds, "reward")
    r = common.result(run, "reward", cfg, result, before)
    if run.rank == 0:
        extra = {"reward_model": {"loss": "bradley-terry", "head": list(LABELS)},
                 "preference_accuracy": {"before": before.get("accuracy"), "after": r.after.get("accuracy")}}
        common.publish(r, run, task, LABELS, train_ds, eval_ds, extra)
    return r


@torch.no_grad()
def score(name: str, prompt: str, candidates: list[str], registry: Registry | None = None,
          batch_size: int = 16) -> list[tuple[str, float]]:
    """``candidates`` as answers to ``prompt``, best first, with their rewards."""
    if not candidates:
        raise OficinaError("no candidate answers to score")
    tuned = load_tuned(name, registry or Registry())
    if tuned.task.name != "classification" or tuned.labels != LABELS:
        raise OficinaError(f"{tuned.entry.ref} is not a reward model (oficina reward trains one)")
    ctx = Context.for_model(tuned.tokenizer, tuned.entry.manifest, max_length=1 << 20)
    pad = pad_id(tuned.tokenizer)
    device = next(tuned.model.parameters()).device
    out: list[float] = []
    for s in range(0, len(candidates), batch_size):
        rows = [Row(e.ids, e.target) for e in (pairs.answer(prompt, c, ctx, f"candidate {i + 1}")
                                               for i, c in enumerate(candidates[s:s + batch_size], s))]
        batch = collate(rows, pad)
        out += scores(tuned.model, {k: v.to(device) for k, v in batch.inputs.items()}).tolist()
    return sorted(zip(candidates, out), key=lambda x: -x[1])
