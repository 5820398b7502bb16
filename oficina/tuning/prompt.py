"""Prompt tuning (Lester et al. 2021): trainable embeddings of ``num_virtual_tokens`` virtual
tokens put before the input; the model is untouched. Initialising them from the embeddings of a
text (§3.2 "class label" / vocabulary init) trains faster than random. Implemented by peft."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import InvalidOptions
from . import peft_common
from .method import Method, register


@dataclass
class PromptConfig:
    num_virtual_tokens: int = 20
    init_text: str | None = None  # e.g. "Answer questions about the town of Vellmar:"
    peft_type: ClassVar[str | None] = "PROMPT_TUNING"

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise InvalidOptions(f"num_virtual_tokens must be at least 1 (got {self.num_virtual_tokens})")

    def peft(self, task, tokenizer_path: str | None):
        import peft

        kwargs = {}
        if self.init_text:
            kwargs = dict(prompt_tuning_init=peft.PromptTuningInit.TEXT,
                          prompt_tuning_init_text=self.init_text, tokenizer_name_or_path=tokenizer_path)
        return peft.PromptTuningConfig(task_type=peft_common.task_type(task),
                                       num_virtual_tokens=self.num_virtual_tokens, **kwargs)


def apply(model, cfg: PromptConfig, task):
    return peft_common.apply(model, cfg.peft(task, getattr(model, "name_or_path", None)))


def load(model, folder, task):
    return peft_common.load(model, folder)


METHOD = register(Method(
    name="prompt", summary="trainable virtual token embeddings before the input (peft)",
    config=PromptConfig, apply=apply, trainable=peft_common.by_name("prompt_encoder", "modules_to_save"),
    save=peft_common.save, load=load, merge=None,
    learning_rate=3e-2,  # soft prompts need a much larger rate than weights (peft's examples: 3e-2)
))
