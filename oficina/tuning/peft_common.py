"""The part of lora/qlora/prompt/prefix/ia3 that is the same: hand the model to peft, save in
peft's layout (``adapter_config.json`` + ``adapter_model.safetensors``, readable by peft and
anything that reads it), load back, merge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..models.loader import no_tqdm
from .method import META


def task_type(task) -> Any:
    from peft import TaskType

    return TaskType[task.peft_task_type]


def apply(model: nn.Module, peft_config) -> nn.Module:
    from peft import get_peft_model

    peft_model = get_peft_model(model, peft_config)
    return peft_model


def save(model: nn.Module, folder: Path, meta: dict | None = None) -> None:
    """peft's layout, untouched; ``meta`` (ours, e.g. quantization) goes to ``oficina.json``."""
    folder = Path(folder)
    with no_tqdm():
        model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model card template, not ours
    if meta:
        (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load(model: nn.Module, folder: Path, config=None) -> nn.Module:
    from peft import PeftModel

    with no_tqdm():
        return PeftModel.from_pretrained(model, str(folder), config=config, is_trainable=False)


def merge(model: nn.Module) -> nn.Module:
    return model.merge_and_unload()


def by_name(*markers: str):
    """A ``trainable(name, param)`` filter: the parameter's name contains one of ``markers``."""
    def trainable(name: str, param: nn.Parameter | None = None) -> bool:
        return any(m in name for m in markers)

    return trainable
