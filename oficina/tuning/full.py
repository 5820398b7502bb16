"""Full fine-tuning: every weight trains (AdamW keeps two fp32 moments per weight, so about
four times the model's size in memory). ``freeze`` keeps the embeddings and the first N
transformer layers fixed, as in layer-freezing studies (Lee et al. 2019, "What would Elsa do?
Freezing layers during transformer fine-tuning"). The result is a whole new model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import InvalidOptions
from ..models.loader import no_tqdm
from .method import Method, register
from .tasks import load_model

# the numbered blocks of transformers' models: model.layers.N (Llama), h.N (GPT-2),
# encoder.layer.N (BERT), encoder.block.N / decoder.block.N (T5)
LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|block)\.(\d+)\.")
EMBEDDINGS = re.compile(r"(?:^|\.)(?:embed_tokens|embeddings|wte|wpe|shared)\b")


@dataclass
class FullConfig:
    freeze: int = 0  # embeddings and the first N layers stay fixed
    peft_type: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        if self.freeze < 0:
            raise InvalidOptions(f"freeze must be 0 or more layers (got {self.freeze})")


def apply(model, cfg: FullConfig, task):
    model.requires_grad_(True)
    if cfg.freeze:
        layers = {int(m.group(1)) for n, _ in model.named_parameters() if (m := LAYER.search(n))}
        if cfg.freeze > len(layers):
            raise InvalidOptions(f"freeze {cfg.freeze}: the model has {len(layers)} layers")
        for name, p in model.named_parameters():
            m = LAYER.search(name)
            if (m and int(m.group(1)) < cfg.freeze) or (not m and EMBEDDINGS.search(name)):
                p.requires_grad_(False)
    return model


def save(model, folder: Path) -> None:
    with no_tqdm():
        model.save_pretrained(str(folder), safe_serialization=True)


def load(model, folder: Path, task):
    return load_model(task, folder)


METHOD = register(Method(
    name="full", summary="every weight (optionally freeze the first N layers)", config=FullConfig,
    apply=apply, trainable=lambda name, param=None: True, save=save, load=load, merge=None,
    learning_rate=5e-5, artifact="model",
))
