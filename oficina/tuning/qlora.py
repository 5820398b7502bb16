"""QLoRA (Dettmers et al. 2023): LoRA trained over a frozen base whose linear layers are stored
quantized (``oficina.quant``: int4 in groups of 64, or int8 per channel). Cuts the memory of
the frozen weights, costs a dequantization per layer per pass (see ``models/quant_linear.py`` for the
measured trade-off on CPU). peft's own ``lora.Linear`` wraps our ``QuantLinear`` through its
custom-module hook (``LoraConfig._register_custom_module``).

Saved in peft's layout (a LORA adapter) plus ``oficina.json`` with the quantization: the adapter
was trained against the quantized base, so loading re-quantizes the base the same way first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import InvalidOptions
from ..models.quant_linear import QuantLinear, dequantize_model, quantize_model
from . import peft_common
from .lora import LoraConfig
from .method import Method, adapter_meta, register


@dataclass
class QLoraConfig(LoraConfig):
    bits: int = 4
    group_size: int = 64
    peft_type: ClassVar[str | None] = None  # a LORA adapter on disk; oficina.json says qlora

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in (4, 8):
            raise InvalidOptions(f"qlora bits must be 4 or 8 (got {self.bits})")

    @property
    def scheme(self) -> str:
        return f"int{self.bits}"


def _lora_config(peft_cfg, model):
    from peft.tuners.lora import Linear as LoraLinear

    if peft_cfg.target_modules == "all-linear" or peft_cfg.target_modules == {"all-linear"}:
        # peft's all-linear looks for nn.Linear; here they are QuantLinear
        peft_cfg.target_modules = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                                          if isinstance(m, QuantLinear)})
    peft_cfg._register_custom_module({QuantLinear: LoraLinear})
    return peft_cfg


def apply(model, cfg: QLoraConfig, task):
    quantize_model(model, cfg.scheme, cfg.group_size, skip=("lm_head",) + task.head)
    # the requested group size: a layer whose width it does not divide uses one group per row
    model._oficina_quantization = {"scheme": cfg.scheme, "group_size": cfg.group_size}
    return peft_common.apply(model, _lora_config(cfg.peft(task), model))


def save(model, folder: Path) -> None:
    quant = model.get_base_model()._oficina_quantization
    peft_common.save(model, folder, meta={"method": "qlora", "quantization": quant})


def load(model, folder: Path, task):
    import peft

    quant = adapter_meta(folder).get("quantization") or {}
    quantize_model(model, quant.get("scheme", "int4"), quant.get("group_size"),
                   skip=("lm_head",) + (task.head if task else ()))
    cfg = peft.LoraConfig.from_pretrained(str(folder))
    return peft_common.load(model, folder, config=_lora_config(cfg, model))


def merge(model):
    """Into a full-precision model: the dequantized base plus B·A. The same function the
    trained adapter computed (W_q x + BAx = (W_q + BA) x), not the original base plus B·A."""
    dequantize_model(model)
    return peft_common.merge(model)


METHOD = register(Method(
    name="qlora", summary="LoRA over a base quantized to 4 or 8 bit (oficina.quant)", config=QLoraConfig,
    apply=apply, trainable=peft_common.by_name("lora_", "modules_to_save"),
    save=save, load=load, merge=merge, learning_rate=2e-4, small_model_learning_rate=2e-3,
))
