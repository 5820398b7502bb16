"""IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning"): learned vectors that rescale keys, values and the feed-forward
activations. Implemented by peft; folds into the base weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import peft_common
from .method import Method, register


@dataclass
class IA3Config:
    # None: peft's per-architecture defaults (k, v and the feed-forward down projection)
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None
    peft_type: ClassVar[str | None] = "IA3"

    def peft(self, task):
        import peft

        return peft.IA3Config(task_type=peft_common.task_type(task), target_modules=self.target_modules,
                              feedforward_modules=self.feedforward_modules)


def apply(model, cfg: IA3Config, task):
    return peft_common.apply(model, cfg.peft(task))


def load(model, folder, task):
    return peft_common.load(model, folder)


METHOD = register(Method(
    name="ia3", summary="learned rescaling vectors on keys, values and feed-forward (peft)",
    config=IA3Config, apply=apply, trainable=peft_common.by_name("ia3_", "modules_to_save"),
    save=peft_common.save, load=load, merge=peft_common.merge,
    learning_rate=3e-3,  # the IA3 paper trains with 3e-3
))
