"""What a fine-tuning method is, and the table of them.

Every method module (``full.py``, ``lora.py``, ...) builds one ``Method`` and registers it here
when imported; everything else looks methods up in ``METHODS`` (litgpt keeps one module per
method with the same surface, peft one folder per tuner). The training loop never sees a method:
it trains whatever parameters ``apply`` left with ``requires_grad``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import InvalidOptions

if TYPE_CHECKING:  # only for annotations: `oficina --help` must not import torch
    from torch import nn

# The method modules shipped with oficina; importing one registers it.
BUILTIN = ("full", "lora", "qlora", "prompt", "prefix", "ia3", "adapter")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    config: type                                   # the method's XConfig dataclass
    apply: Callable[[nn.Module, Any, Any], nn.Module]  # (model, XConfig, Task) -> model to train
    trainable: Callable[[str, nn.Parameter], bool]  # is this parameter one the method trains?
    save: Callable[[nn.Module, Path], None]        # write what changed (PEFT layout, or a whole model)
    load: Callable[[nn.Module, Path, Any], nn.Module]  # (base, folder, Task) -> model as trained
    merge: Callable[[nn.Module], nn.Module] | None = None  # fold into the base weights
    learning_rate: float = 1e-4                    # default when the recipe gives none
    small_model_learning_rate: float | None = None  # the same, for models under defaults.SMALL_MODEL
    artifact: str = "adapter"                      # "adapter" (base + small files) | "model"


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def load_all() -> dict[str, Method]:
    for name in BUILTIN:
        importlib.import_module(f"{__package__}.{name}")
    return METHODS


def get(name: str) -> Method:
    methods = load_all()
    if name not in methods:
        raise InvalidOptions(f"unknown tuning method {name!r}; methods: {', '.join(methods)}")
    return methods[name]


META = "oficina.json"  # beside adapter_config.json: what peft's config has no field for


def adapter_meta(folder: Path) -> dict:
    """Our notes on an adapter folder (method, task, labels, quantization), or {}."""
    import json

    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        raise InvalidOptions(f"{path}: not valid JSON") from None
    return meta if isinstance(meta, dict) else {}


def method_of_adapter(folder: Path) -> str:
    """The method that wrote an adapter folder: our ``oficina.json`` says so; our own adapter
    kinds say so in ``adapter_config.json``; plain PEFT adapters name their ``peft_type``."""
    import json

    meta = adapter_meta(folder)
    if "method" in meta:
        return str(meta["method"])
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidOptions(f"{folder}: cannot read adapter_config.json ({e})") from None
    if "oficina_method" in config:
        return str(config["oficina_method"])
    peft_type = str(config.get("peft_type", "")).upper()
    for name, m in load_all().items():
        if getattr(m.config, "peft_type", None) == peft_type:
            return name
    raise InvalidOptions(f"adapter of type {peft_type or 'unknown'!r} is not supported; "
                         f"supported: {', '.join(load_all())}")
