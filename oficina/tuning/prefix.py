"""Prefix tuning (Li & Liang 2021): trainable key/value vectors of ``num_virtual_tokens``
positions prepended in every attention layer. With ``projection`` they are produced by a small
MLP during training (the paper's reparametrisation, §4.3). Implemented by peft."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import InvalidOptions
from . import peft_common
from .method import Method, register


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = 20
    projection: bool = False
    projection_hidden: int = 256
    peft_type: ClassVar[str | None] = "PREFIX_TUNING"

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise InvalidOptions(f"num_virtual_tokens must be at least 1 (got {self.num_virtual_tokens})")

    def peft(self, task):
        import peft

        return peft.PrefixTuningConfig(task_type=peft_common.task_type(task),
                                       num_virtual_tokens=self.num_virtual_tokens,
                                       prefix_projection=self.projection,
                                       encoder_hidden_size=self.projection_hidden)


def apply(model, cfg: PrefixConfig, task):
    return peft_common.apply(model, cfg.peft(task))


def load(model, folder, task):
    return peft_common.load(model, folder)


METHOD = register(Method(
    name="prefix", summary="trainable key/value prefixes in every attention layer (peft)",
    config=PrefixConfig, apply=apply, trainable=peft_common.by_name("prompt_encoder", "modules_to_save"),
    save=peft_common.save, load=load, merge=None,
    learning_rate=1e-2,  # peft's prefix-tuning examples
))
