"""LoRA (Hu et al. 2021): W x + (alpha/r) B A x on chosen linear layers, A [r, in], B [out, r]
with B = 0 at the start, so training starts from the base model. Implemented by peft."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import InvalidOptions
from . import peft_common
from .method import Method, register


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # [all-linear] (the default): every linear layer but the output head, as QLoRA does (see
    # tuning/defaults.py); None: peft's per-architecture default (the attention q/v projections
    # for Llama, BERT, T5; c_attn for GPT-2).
    target_modules: list[str] | None = field(default_factory=lambda: ["all-linear"])
    peft_type: ClassVar[str | None] = "LORA"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise InvalidOptions(f"lora r must be at least 1 (got {self.r})")
        if self.alpha <= 0:
            raise InvalidOptions(f"lora alpha must be positive (got {self.alpha})")
        if not 0 <= self.dropout < 1:
            raise InvalidOptions(f"lora dropout must be in [0, 1) (got {self.dropout})")

    def peft(self, task):
        import peft

        targets = self.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        return peft.LoraConfig(task_type=peft_common.task_type(task), r=self.r, lora_alpha=self.alpha,
                               lora_dropout=self.dropout, target_modules=targets)


def apply(model, cfg: LoraConfig, task):
    return peft_common.apply(model, cfg.peft(task))


def load(model, folder, task):
    return peft_common.load(model, folder)


METHOD = register(Method(
    name="lora", summary="low-rank A·B added to chosen linear layers (peft)", config=LoraConfig,
    apply=apply, trainable=peft_common.by_name("lora_", "modules_to_save"),
    save=peft_common.save, load=load, merge=peft_common.merge,
    learning_rate=2e-4,  # the LoRA/QLoRA papers' range (7B+ models) is 1e-4..3e-4
    small_model_learning_rate=2e-3,  # a 135M model learns facts at 2e-3, not 2e-4 (tuning/defaults.py)
))
