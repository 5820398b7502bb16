"""GGUF file types ("Q4_K_M"): which GGML type each tensor of a model is stored as.

A file type is a default type plus a few rules that give the tensors quantization hurts most
more bits. The rules are llama.cpp's (``llama_tensor_get_type_impl`` in src/llama-quant.cpp),
written as rows of data for the dense decoder models oficina exports: the branches for MoE
experts, Falcon, 70B models and the IQ types are left out. ``tensor_type`` then applies the
same two fix-ups llama.cpp does:

- output.weight (or token_embd.weight when the output is tied to it) gets Q6_K in every
  quantized file type except Q8_0, or Q8_0 when its rows do not split into the default's blocks;
- a K-quant needs rows of a multiple of 256: other tensors fall back to a 32-block type of about
  the same size (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0;
  ``tensor_type_fallback``), and to F16 when even that does not fit. llama.cpp refuses the
  rare matrix whose rows are not a multiple of 32 for the simple types; convert_hf_to_gguf.py
  stores it as F16, and so does this.

F32/F16/BF16 are not "quantized" file types: every matrix is stored as that type and no rule
applies (convert_hf_to_gguf.py --outtype). Q8_0 gets the same treatment from both tools.

Small models show these fallbacks a lot: SmolLM2-135M's hidden size is 576, so only ffn_down
(rows of 1536) can be a K-quant; its Q4_K_M is mostly Q5_0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from gguf import LlamaFileType

from .types import TYPES

__all__ = ["ALIASES", "FILE_TYPES", "FileType", "Layer", "Rule", "category", "get", "tensor_type"]


@dataclass(frozen=True)
class Layer:
    """Where a tensor sits: the i-th of n tensors of its kind (in a dense model, its layer of n),
    in a model whose attention has ``gqa`` query heads per key/value head."""

    i: int
    n: int
    gqa: int = 1


def more_bits(at: Layer) -> bool:
    """``use_more_bits``: the first and last eighth of the layers, and every third one between."""
    return at.i < at.n // 8 or at.i >= 7 * at.n // 8 or (at.i - at.n // 8) % 3 == 2


@dataclass(frozen=True)
class Rule:
    """Tensors of ``category`` get ``type`` where ``when`` holds; the first matching rule wins."""

    category: str
    type: str
    when: Callable[[Layer], bool] = lambda at: True


@dataclass(frozen=True)
class FileType:
    name: str  # as llama-quantize spells it
    ftype: LlamaFileType  # general.file_type
    default: str  # GGML type of every matrix no rule names
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    @property
    def quantized(self) -> bool:
        return self.default not in ("F32", "F16", "BF16")


FILE_TYPES: dict[str, FileType] = {}


def register(ft: FileType) -> FileType:
    unknown = [t for t in [ft.default, *(r.type for r in ft.rules)] if t not in TYPES]
    if unknown:
        raise ValueError(f"{ft.name}: unknown GGML types {unknown}")
    FILE_TYPES[ft.name] = ft
    return ft


# llama-quantize's shorter names (tools/quantize/quantize.cpp QUANT_OPTIONS)
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

for name, ftype in [("F32", LlamaFileType.ALL_F32), ("F16", LlamaFileType.MOSTLY_F16),
                    ("BF16", LlamaFileType.MOSTLY_BF16), ("Q8_0", LlamaFileType.MOSTLY_Q8_0),
                    ("Q4_0", LlamaFileType.MOSTLY_Q4_0), ("Q4_1", LlamaFileType.MOSTLY_Q4_1),
                    ("Q5_0", LlamaFileType.MOSTLY_Q5_0), ("Q5_1", LlamaFileType.MOSTLY_Q5_1)]:
    register(FileType(name, ftype, name))

# The K-quant mixes: llama_tensor_get_type_impl's branches for each, in its order.
register(FileType("Q2_K", LlamaFileType.MOSTLY_Q2_K, "Q2_K", (
    Rule("attn_v", "Q4_K", lambda at: at.gqa >= 4),
    Rule("attn_v", "Q3_K"),
    Rule("ffn_down", "Q3_K"),
    Rule("attn_output", "Q3_K"),
)))
register(FileType("Q3_K_S", LlamaFileType.MOSTLY_Q3_K_S, "Q3_K"))
register(FileType("Q3_K_M", LlamaFileType.MOSTLY_Q3_K_M, "Q3_K", (
    Rule("attn_v", "Q5_K", lambda at: at.i < 2),
    Rule("attn_v", "Q4_K"),
    Rule("ffn_down", "Q5_K", lambda at: at.i < at.n // 16),
    Rule("ffn_down", "Q4_K"),
    Rule("attn_output", "Q4_K"),
    Rule("attn_qkv", "Q4_K"),
)))
register(FileType("Q3_K_L", LlamaFileType.MOSTLY_Q3_K_L, "Q3_K", (
    Rule("attn_v", "Q5_K"),
    Rule("ffn_down", "Q5_K"),
    Rule("attn_output", "Q5_K"),
    Rule("attn_qkv", "Q4_K"),
)))
register(FileType("Q4_K_S", LlamaFileType.MOSTLY_Q4_K_S, "Q4_K", (
    Rule("attn_v", "Q5_K", lambda at: at.i < 4),
    Rule("ffn_down", "Q5_K", lambda at: at.i < at.n // 8),
)))
register(FileType("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M, "Q4_K", (
    Rule("attn_v", "Q6_K", more_bits),
    Rule("ffn_down", "Q6_K", more_bits),
    Rule("attn_qkv", "Q5_K"),
)))
register(FileType("Q5_K_S", LlamaFileType.MOSTLY_Q5_K_S, "Q5_K"))
register(FileType("Q5_K_M", LlamaFileType.MOSTLY_Q5_K_M, "Q5_K", (
    Rule("attn_v", "Q6_K", more_bits),
    Rule("ffn_down", "Q6_K", more_bits),
    Rule("attn_qkv", "Q6_K"),
)))
register(FileType("Q6_K", LlamaFileType.MOSTLY_Q6_K, "Q6_K"))

# tensor_type_fallback
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def get(name: str) -> FileType:
    key = ALIASES.get(name.upper(), name.upper())
    if key not in FILE_TYPES:
        raise KeyError(f"unknown GGUF type {name!r} (choose from {', '.join([*FILE_TYPES, *ALIASES])})")
    return FILE_TYPES[key]


def category(name: str) -> str:
    """A GGUF tensor name's kind, as ``tensor_get_category`` reads it ("blk.3.attn_v.weight" -> "attn_v")."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for kind in ("attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output"):
        if f"{kind}.weight" in name:
            return kind
    for kind in ("ffn_up", "ffn_gate", "ffn_down"):
        if kind in name:
            return kind
    return "other"


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """``tensor_allows_quantization`` for the tensors of a dense decoder: matrices named *weight,
    not norms."""
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name


def tensor_type(ft: FileType, name: str, shape: tuple[int, ...], at: Layer | None = None,
                tied_output: bool = False) -> str:
    """The GGML type of tensor ``name`` (numpy ``shape``: rows last) in a file of type ``ft``.
    ``at`` places a per-layer tensor; ``tied_output`` says the model has no output.weight, so its
    token embedding is its output matrix too."""
    if not quantizable(name, shape):
        return "F32"  # norms, biases, RoPE factors: llama.cpp keeps them as converted, F32
    ncols = shape[-1]
    if not ft.quantized or ft.default == "Q8_0":
        want = ft.default
    elif category(name) == "output" or (tied_output and category(name) == "token_embd"):
        want = "Q8_0" if not TYPES[ft.default].fits(ncols) else "Q6_K"
    else:
        kind = category(name)
        rule = next((r for r in ft.rules if r.category == kind and r.when(at or Layer(0, 1))), None)
        want = rule.type if rule else ft.default
    if not TYPES[want].fits(ncols):
        want = FALLBACK.get(want, "F16")
        if not TYPES[want].fits(ncols):
            want = "F16"
    return want
