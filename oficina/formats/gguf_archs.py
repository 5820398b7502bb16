"""The model families a GGUF file can hold, as data: one ``ArchSpec`` row per config.json
``model_type`` in ``ARCHS`` (its llama.cpp arch, HF module path -> gguf-py ``MODEL_TENSOR`` table,
metadata keys, the layout fixes where llama.cpp's layout differs from HF's, RoPE extras and the
checks that refuse what llama.cpp would run wrong). Read forwards by ``gguf_export.export_gguf``
and backwards by ``gguf_export.load_gguf_weights``.

"llama" (and SmolLM), "mistral" (llama.cpp's arch "llama": same tensors and permutation), "qwen2"
(its own arch; NEOX RoPE, so no permutation; q/k/v biases) and "gemma3_text" (arch "gemma3";
norms stored as 1 + w; q/k norms and post-norms). A new family is a new row plus whatever
``fixes`` it needs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gguf
import numpy as np
from gguf import MODEL_TENSOR as T
from gguf import GGUFValueType as V
from gguf import Keys

from ..errors import FormatError

__all__ = ["ARCHS", "ArchSpec", "HParam", "Layout", "register", "resolve_name"]

@dataclass(frozen=True)
class HParam:
    """One metadata key: a gguf-py ``Keys`` template ("{arch}.context_length"), its value type,
    and the transformers config attribute it comes from, or a function of the config (a value of
    ``None`` is left out of the file)."""

    key: str
    vtype: V
    source: str | Callable[[Any], Any]

    def value(self, config: Any) -> Any:
        return self.source(config) if callable(self.source) else getattr(config, self.source)


@dataclass(frozen=True)
class Layout:
    """Where llama.cpp stores a tensor differently from HF: ``to_gguf`` on export and its inverse
    ``from_gguf`` on import, each (float32 array, config) -> array. Calling it exports."""

    to_gguf: Callable[[np.ndarray, Any], np.ndarray]
    from_gguf: Callable[[np.ndarray, Any], np.ndarray]

    def __call__(self, w: np.ndarray, config: Any) -> np.ndarray:
        return self.to_gguf(w, config)


Rope = Callable[[Any], tuple[list[tuple[str, V, Any]], list[tuple[T, np.ndarray]]]]


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers ``model_type`` becomes one llama.cpp architecture."""

    model_type: str  # config.json "model_type"
    arch: gguf.MODEL_ARCH  # its name (MODEL_ARCH_NAMES) is general.architecture and the key prefix
    tensors: Mapping[str, T]  # HF module path, "{bid}" for the layer -> GGUF tensor (gguf-py names)
    hparams: tuple[HParam, ...]
    fixes: Mapping[T, Layout] = field(default_factory=dict)
    # config -> (extra metadata, extra tensors): RoPE scaling, which llama.cpp spells per family
    rope: Rope = lambda c: ([], [])
    # config -> None, raising FormatError for what llama.cpp would compute differently
    check: Callable[[Any], None] = lambda c: None

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


ARCHS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Add a family; every tensor it names must exist for its llama.cpp arch (constants.MODEL_TENSORS)."""
    unknown = [t.name for t in spec.tensors.values() if t not in gguf.MODEL_TENSORS[spec.arch]]
    if unknown:
        raise ValueError(f"{spec.model_type}: tensors {unknown} are not part of GGUF arch {spec.arch_name!r}")
    ARCHS[spec.model_type] = spec
    return spec


# ---------------------------------------------------------------------------------------------
# Llama. Names: gguf-py tensor_mapping.py (the "model.*" rows; transformers inverts the same
# table on load, get_gguf_hf_weights_map). Keys: convert_hf_to_gguf.py TextModel/LlamaModel
# .set_gguf_parameters, read back by transformers integrations/ggml.py GGUF_CONFIG_MAPPING["llama"].

def _rope_interleave(heads: str) -> Layout:
    """HF Llama rotates the pairs (i, i + d/2) of each head ("rotate_half"): its conversion script
    (convert_llama_weights_to_hf.py) permuted the Q/K rows of Meta's checkpoints, which rotate
    adjacent pairs (2i, 2i + 1) as GGML's normal RoPE mode does. llama.cpp's LlamaModel.permute
    puts the rows back; transformers' LlamaTensorProcessor._reverse_permute_weights undoes it.
    Per head, rows [x0 .. x(d/2-1), y0 .. y(d/2-1)] become [x0, y0, x1, y1, ...]. K uses the
    KV head count. Biases (1-D) move the same way."""

    def to_gguf(w: np.ndarray, config: Any) -> np.ndarray:
        n = getattr(config, heads)
        # (n_head * d, ...) -> (n_head, 2, d/2, ...) -> (n_head, d/2, 2, ...) -> (n_head * d, ...)
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    def from_gguf(w: np.ndarray, config: Any) -> np.ndarray:
        n = getattr(config, heads)
        return w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    return Layout(to_gguf, from_gguf)


def _rope_theta(config: Any) -> float:
    return (config.rope_parameters or {}).get("rope_theta", 10000.0)


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _key_length(config: Any) -> int | None:
    # llama.cpp derives n_embd_head from embedding_length / head_count; say it only when it differs
    return config.head_dim if _head_dim(config) * config.num_attention_heads != config.hidden_size else None


def _linear_rope(rope: Mapping[str, Any], supported: str) -> list[tuple[str, V, Any]]:
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return []
    if kind == "linear":
        return [(Keys.Rope.SCALING_TYPE, V.STRING, "linear"), (Keys.Rope.SCALING_FACTOR, V.FLOAT32, rope["factor"])]
    raise FormatError(f"RoPE scaling {kind!r} cannot be exported to GGUF yet (supported: {supported})")


def _llama_rope(config: Any) -> tuple[list[tuple[str, V, Any]], list[tuple[T, np.ndarray]]]:
    """RoPE scaling as LlamaModel writes it: "linear" as two keys, "llama3" as per-frequency
    divisors in a rope_freqs tensor (generate_extra_tensors). Others are refused."""
    rope = dict(config.rope_parameters or {})
    if rope.get("rope_type", "default") != "llama3":
        return _linear_rope(rope, "default, linear, llama3"), []
    dim = config.head_dim
    freqs = 1.0 / (rope.get("rope_theta", 10000.0) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return [], [(T.ROPE_FREQS, np.asarray(factors, dtype=np.float32))]


_LLAMA_TENSORS: dict[str, T] = {
    "model.embed_tokens": T.TOKEN_EMBD,
    "model.norm": T.OUTPUT_NORM,
    "lm_head": T.OUTPUT,
    "model.layers.{bid}.input_layernorm": T.ATTN_NORM,
    "model.layers.{bid}.self_attn.q_proj": T.ATTN_Q,
    "model.layers.{bid}.self_attn.k_proj": T.ATTN_K,
    "model.layers.{bid}.self_attn.v_proj": T.ATTN_V,
    "model.layers.{bid}.self_attn.o_proj": T.ATTN_OUT,
    "model.layers.{bid}.post_attention_layernorm": T.FFN_NORM,
    "model.layers.{bid}.mlp.gate_proj": T.FFN_GATE,
    "model.layers.{bid}.mlp.up_proj": T.FFN_UP,
    "model.layers.{bid}.mlp.down_proj": T.FFN_DOWN,
}

_COMMON_HPARAMS = (
    HParam(Keys.LLM.CONTEXT_LENGTH, V.UINT32, "max_position_embeddings"),
    HParam(Keys.LLM.EMBEDDING_LENGTH, V.UINT32, "hidden_size"),
    HParam(Keys.LLM.BLOCK_COUNT, V.UINT32, "num_hidden_layers"),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, V.UINT32, "intermediate_size"),
    HParam(Keys.Attention.HEAD_COUNT, V.UINT32, "num_attention_heads"),
    HParam(Keys.Attention.HEAD_COUNT_KV, V.UINT32, "num_key_value_heads"),
    HParam(Keys.Attention.LAYERNORM_RMS_EPS, V.FLOAT32, "rms_norm_eps"),
    HParam(Keys.LLM.VOCAB_SIZE, V.UINT32, "vocab_size"),
)

_LLAMA_HPARAMS = _COMMON_HPARAMS + (
    HParam(Keys.Rope.FREQ_BASE, V.FLOAT32, _rope_theta),
    HParam(Keys.Rope.DIMENSION_COUNT, V.UINT32, "head_dim"),  # transformers reads it back as head_dim
    HParam(Keys.Attention.KEY_LENGTH, V.UINT32, _key_length),
    HParam(Keys.Attention.VALUE_LENGTH, V.UINT32, _key_length),
)

_LLAMA_FIXES = {T.ATTN_Q: _rope_interleave("num_attention_heads"), T.ATTN_K: _rope_interleave("num_key_value_heads")}

register(ArchSpec(
    model_type="llama",
    arch=gguf.MODEL_ARCH.LLAMA,
    tensors=_LLAMA_TENSORS,
    hparams=_LLAMA_HPARAMS,
    fixes=_LLAMA_FIXES,
    rope=_llama_rope,
))

# Mistral: convert_hf_to_gguf.py registers MistralForCausalLM as a LlamaModel. llama.cpp's llama
# arch has no sliding window, so Mistral 7B v0.1 (window 4096) runs there with full attention,
# as it does in every llama.cpp conversion of it.
register(ArchSpec(
    model_type="mistral",
    arch=gguf.MODEL_ARCH.LLAMA,
    tensors=_LLAMA_TENSORS,
    hparams=_LLAMA_HPARAMS,
    fixes=_LLAMA_FIXES,
    rope=_llama_rope,
))


# ---------------------------------------------------------------------------------------------
# Qwen2 (convert_hf_to_gguf.py Qwen2Model): the Llama tensor names (q/k/v carry biases, found by
# name), NEOX RoPE in llama.cpp (LLAMA_ROPE_TYPE_NEOX for LLM_ARCH_QWEN2), so no Q/K permutation.

def _qwen2_check(config: Any) -> None:
    if getattr(config, "use_sliding_window", False):
        raise FormatError("Qwen2 with use_sliding_window cannot be exported to GGUF (llama.cpp's qwen2 has no window)")


register(ArchSpec(
    model_type="qwen2",
    arch=gguf.MODEL_ARCH.QWEN2,
    tensors=_LLAMA_TENSORS,
    hparams=_COMMON_HPARAMS + (
        HParam(Keys.Rope.FREQ_BASE, V.FLOAT32, _rope_theta),
        HParam(Keys.Attention.KEY_LENGTH, V.UINT32, _key_length),
        HParam(Keys.Attention.VALUE_LENGTH, V.UINT32, _key_length),
    ),
    rope=lambda config: (_linear_rope(dict(config.rope_parameters or {}), "default, linear"), []),
    check=_qwen2_check,
))


# ---------------------------------------------------------------------------------------------
# Gemma 3 text (convert_hf_to_gguf.py Gemma3Model; llama.cpp llama-model.cpp LLM_ARCH_GEMMA3).
# HF's Gemma3RMSNorm scales by (1 + w); llama.cpp's norm scales by w, so every norm is stored
# as 1 + w (Gemma3Model.modify_tensors). llama.cpp hard-codes the local/global attention layout
# (every 6th layer global, set_swa_pattern(6)) and the local layers' RoPE base (10000): models
# that differ are refused rather than exported wrong.

_GEMMA3_TENSORS: dict[str, T] = {
    "model.embed_tokens": T.TOKEN_EMBD,
    "model.norm": T.OUTPUT_NORM,
    "model.layers.{bid}.input_layernorm": T.ATTN_NORM,
    "model.layers.{bid}.self_attn.q_proj": T.ATTN_Q,
    "model.layers.{bid}.self_attn.k_proj": T.ATTN_K,
    "model.layers.{bid}.self_attn.v_proj": T.ATTN_V,
    "model.layers.{bid}.self_attn.o_proj": T.ATTN_OUT,
    "model.layers.{bid}.self_attn.q_norm": T.ATTN_Q_NORM,
    "model.layers.{bid}.self_attn.k_norm": T.ATTN_K_NORM,
    "model.layers.{bid}.post_attention_layernorm": T.ATTN_POST_NORM,
    "model.layers.{bid}.pre_feedforward_layernorm": T.FFN_PRE_NORM,  # named "ffn_norm" too
    "model.layers.{bid}.post_feedforward_layernorm": T.FFN_POST_NORM,
    "model.layers.{bid}.mlp.gate_proj": T.FFN_GATE,
    "model.layers.{bid}.mlp.up_proj": T.FFN_UP,
    "model.layers.{bid}.mlp.down_proj": T.FFN_DOWN,
}

_ONE_PLUS = Layout(lambda w, c: w + 1.0, lambda w, c: w - 1.0)


def _gemma3_rope(config: Any) -> dict[str, dict]:
    rope = dict(config.rope_parameters or {})
    return rope if "full_attention" in rope else {"full_attention": rope, "sliding_attention": {}}


def _gemma3_check(config: Any) -> None:
    for attr in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, attr, None) is not None:
            raise FormatError(f"Gemma 3 with {attr} cannot be exported to GGUF (llama.cpp's gemma3 has none)")
    if getattr(config, "query_pre_attn_scalar", config.head_dim) != config.head_dim:
        # llama.cpp scales attention by 1/sqrt(head_dim) (by 1/sqrt(n_embd/n_head) for its 27B only)
        raise FormatError("Gemma 3 with query_pre_attn_scalar != head_dim cannot be exported to GGUF yet")
    layout = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(config.num_hidden_layers)]
    if list(config.layer_types) != layout:
        raise FormatError("Gemma 3 layer_types must be 5 sliding-window layers then 1 global, repeated "
                          "(llama.cpp assumes that layout)")
    local = _gemma3_rope(config).get("sliding_attention") or {}
    if local.get("rope_theta", 10000.0) != 10000.0 or local.get("rope_type", "default") != "default":
        raise FormatError("Gemma 3 sliding-window layers must use plain RoPE with base 10000 (llama.cpp assumes it)")


register(ArchSpec(
    model_type="gemma3_text",
    arch=gguf.MODEL_ARCH.GEMMA3,
    tensors=_GEMMA3_TENSORS,
    hparams=_COMMON_HPARAMS + (
        HParam(Keys.Attention.KEY_LENGTH, V.UINT32, "head_dim"),
        HParam(Keys.Attention.VALUE_LENGTH, V.UINT32, "head_dim"),
        # the global layers' base; the local ones' is fixed (see _gemma3_check)
        HParam(Keys.Rope.FREQ_BASE, V.FLOAT32, lambda c: _gemma3_rope(c)["full_attention"].get("rope_theta", 1e6)),
        HParam(Keys.Attention.SLIDING_WINDOW, V.UINT32, "sliding_window"),
    ),
    fixes={t: _ONE_PLUS for t in _GEMMA3_TENSORS.values() if gguf.TENSOR_NAMES[t].endswith("norm")},
    rope=lambda config: (_linear_rope(_gemma3_rope(config)["full_attention"], "default, linear"), []),
    check=_gemma3_check,
))


# ---------------------------------------------------------------------------------------------
# HF tensor names -> GGUF names.

_LAYER = re.compile(r"(?<=\.layers\.)(\d+)(?=\.)")


def resolve_name(spec: ArchSpec, hf_name: str) -> tuple[T, str] | None:
    """"model.layers.3.self_attn.q_proj.weight" -> (ATTN_Q, "blk.3.attn_q.weight")"""
    module, _, suffix = hf_name.rpartition(".")
    bid = _LAYER.search(module)
    tensor = spec.tensors.get(_LAYER.sub("{bid}", module, count=1))
    if tensor is None:
        return None
    return tensor, gguf.TENSOR_NAMES[tensor].format(bid=bid.group(1) if bid else None) + "." + suffix
