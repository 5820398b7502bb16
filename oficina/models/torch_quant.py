"""Weight-only quantization of a transformers model in PyTorch, kept packed on disk and in memory.

    cfg = TorchQuantConfig("int4", group_size=64)
    result = quantize(model, cfg)            # in place; result.kept says what was not and why
    save(model, tokenizer, folder, result)   # an HF folder whose config.json says how it is packed
    model = load_packed(folder, "decoder-only")   # what models.loader does for such a folder

``fp16`` / ``bf16`` cast every weight (the model then runs in that dtype). ``int8`` / ``int4``
replace the linear layers by ``QuantLinear`` (``quant_linear.py``: int8 per output channel, int4 in
groups of ``group_size`` input columns, symmetric absmax), the one packed-linear implementation
that generation, evaluation and QLoRA all run on; everything else stays float32.

Left in higher precision, and why (``KEPT``):
  embeddings   a lookup, not a matrix product: int codes would save memory but no time, and
               llama.cpp's mixes keep token_embd at Q6_K/Q8_0 as well
  output head  sets every logit, the most quantization-sensitive matrix (llama-quant.cpp gives
               output.weight Q6_K in every K-quant mix); in tied models it is the embedding
  norms, biases  vectors: a few kilobytes, and an error there scales a whole activation
  other modules  anything that is not a plain ``nn.Linear`` (GPT-2's Conv1D, attention
               variants with fused parameters) is kept as it is rather than guessed at
A linear layer whose input width is not a multiple of the group size gets one group per row.

A packed folder is an ordinary HF folder (config.json, model.safetensors, tokenizer) whose
config.json carries ``"oficina_quantization": {"to", "group_size", "modules"}``; transformers
ignores the key, ``models.loader`` sees it and calls ``load_packed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FormatError, InvalidOptions
from .quant_linear import SCHEMES, QuantLinear, _set_module, quantize_model

__all__ = ["KEY", "KEPT", "TARGETS", "QuantResult", "TorchQuantConfig", "is_packed", "load_packed", "quantize", "save"]

KEY = "oficina_quantization"  # in config.json
TARGETS = ("fp16", "bf16", "int8", "int4")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
HEADS = ("lm_head", "classifier", "score")  # output heads, by module name

KEPT = {
    "embedding": "embedding: a lookup, not a matmul (and the output matrix too when tied)",
    "head": "output head: sets every logit, the most sensitive matrix (llama.cpp keeps it at Q6_K/Q8_0)",
    "vector": "norms and biases: tiny, and an error there scales a whole activation",
    "other": "not a plain nn.Linear: kept as it is",
}


@dataclass(frozen=True)
class TorchQuantConfig:
    to: str  # fp16 | bf16 | int8 | int4
    group_size: int | None = None  # input columns per scale; None: int8 per channel, int4 64

    def __post_init__(self):
        if self.to not in TARGETS:
            raise InvalidOptions(f"cannot quantize to {self.to!r} in PyTorch (choose from {', '.join(TARGETS)})")
        if self.group_size is not None:
            if self.to in _DTYPES:
                raise InvalidOptions(f"--group-size applies to int8/int4, not {self.to}")
            if self.group_size < 2 or self.group_size % 2:
                raise InvalidOptions(f"group size must be an even number >= 2 (got {self.group_size})")


@dataclass
class QuantResult:
    to: str
    group_size: int | None
    modules: list[str] = field(default_factory=list)  # the linear layers now QuantLinear
    kept: dict[str, str] = field(default_factory=dict)  # module -> why it stayed float32
    per_row: list[str] = field(default_factory=list)  # quantized with one group per row instead

    def meta(self) -> dict[str, Any]:
        return {"to": self.to, "group_size": self.group_size, "modules": self.modules}


def _why_kept(name: str, module: nn.Module) -> str | None:
    if isinstance(module, nn.Embedding):
        return KEPT["embedding"]
    if type(module) is nn.Linear and any(h in name.split(".") for h in HEADS):
        return KEPT["head"]
    if type(module) is not nn.Linear and any(p.ndim >= 2 for p in module.parameters(recurse=False)):
        return KEPT["other"]
    return None


def quantize(model: nn.Module, cfg: TorchQuantConfig) -> QuantResult:
    """Quantize ``model`` in place as ``cfg`` says; return what was done."""
    result = QuantResult(cfg.to, cfg.group_size)
    if cfg.to in _DTYPES:
        model.to(_DTYPES[cfg.to])
        result.modules = [n for n, p in model.named_parameters()]
        return result
    for name, module in model.named_modules():
        why = _why_kept(name, module)
        if why:
            result.kept[name] = why
    if any(p.ndim == 1 for p in model.parameters()):
        result.kept["(norms, biases)"] = KEPT["vector"]
    quantize_model(model, cfg.to, cfg.group_size, skip=HEADS)
    scheme = SCHEMES[cfg.to]
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            result.modules.append(name)
            if cfg.group_size and scheme.group(module.in_features, cfg.group_size) != cfg.group_size:
                result.per_row.append(name)
    result.group_size = cfg.group_size or scheme.default_group  # None: per channel
    return result


def save(model: nn.Module, tokenizer: Any, folder: str | Path, result: QuantResult) -> Path:
    """Write ``model`` (quantized by ``quantize``) as a packed HF folder."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config
    setattr(config, KEY, result.meta())
    if result.to in _DTYPES:
        config.dtype = _DTYPES[result.to]
    try:
        config.save_pretrained(folder)
    finally:
        delattr(config, KEY)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))  # drops tied duplicates
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def is_packed(folder: str | Path) -> bool:
    cfg = Path(folder) / "config.json"
    try:
        return cfg.is_file() and KEY in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def load_packed(folder: str | Path, auto_class: str = "AutoModelForCausalLM") -> nn.Module:
    """Rebuild a model saved by ``save``: the architecture from config.json, its linear layers
    replaced by empty ``QuantLinear`` shells, then the packed tensors loaded into them."""
    import transformers
    from safetensors.torch import load_model
    from transformers.initialization import no_init_weights

    folder = Path(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    meta = getattr(config, KEY)
    to = meta["to"]
    if to not in TARGETS:
        raise FormatError(f"{folder / 'config.json'}: unknown {KEY}.to {to!r}")
    with no_init_weights():
        model = getattr(transformers, auto_class).from_config(config)
    if to in _DTYPES:
        model.to(_DTYPES[to])
    else:
        for name in meta["modules"]:
            try:
                linear = model.get_submodule(name)
            except AttributeError:
                raise FormatError(f"{folder}: packed module {name!r} is not in the model") from None
            shell = QuantLinear(linear.in_features, linear.out_features, to, meta.get("group_size"),
                                bias=linear.bias is not None)
            _set_module(model, name, shell)
    # ``save`` kept one name of each tied pair (either one): tie first, so loading that name
    # fills both, and a missing name is fine when it shares its tensor with a loaded one
    model.tie_weights()
    missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False)
    state = model.state_dict(keep_vars=True)
    loaded = {state[k].data_ptr() for k in state if k not in set(missing)}
    missing = [k for k in missing if state[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise FormatError(f"{folder.name}: packed weights do not match the model "
                          f"({len(missing)} missing, e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})")
    model.tie_weights()
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.compute_dtype = torch.float32
    return model.eval()
