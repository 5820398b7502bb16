"""What the fast decoder needs to know about a model, read from its transformers config.

Families are data: each supported ``model_type`` is one row of ``FAMILIES`` saying how it
differs from plain Llama (litgpt ``config.py`` style). A model whose type is not a row, or that
uses a feature the decoder does not have (e.g. rope scaling other than linear/llama3), gets an
``Unsupported`` with the reason, and the session falls back to transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...errors import OficinaError


class Unsupported(OficinaError):
    """The fast decoder cannot run this model (the message says why); use transformers."""


@dataclass(frozen=True)
class Family:
    norm_plus_one: bool = False   # RMSNorm scales by (1 + w) (Gemma); folded into w at load
    sandwich: bool = False        # extra norms after attention and MLP (Gemma 2/3)
    act: str = "silu"             # gated MLP activation: silu (SwiGLU) | gelu_tanh (GeGLU)
    embed_scale: bool = False     # embeddings multiplied by sqrt(hidden) (Gemma)
    qk_norm: bool = False         # RMSNorm on each head's q and k (Qwen3, Gemma 3)
    gguf_permuted_qk: bool = False  # llama.cpp's converter permuted q/k rows for its rope (Llama)


# model_type (transformers) or general.architecture (GGUF) -> family row
FAMILIES: dict[str, Family] = {
    "llama": Family(gguf_permuted_qk=True),
    "mistral": Family(gguf_permuted_qk=True),
    "qwen2": Family(),
    "qwen3": Family(qk_norm=True),
    "gemma3_text": Family(norm_plus_one=True, sandwich=True, act="gelu_tanh", embed_scale=True, qk_norm=True),
}
FAMILIES["gemma3"] = FAMILIES["gemma3_text"]  # the GGUF architecture name


@dataclass(frozen=True)
class FastConfig:
    model_type: str
    family: Family
    vocab_size: int
    dim: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int                        # MLP intermediate size
    eps: float
    context_length: int
    tied: bool
    attn_bias: bool
    mlp_bias: bool
    attn_scale: float
    rope_dim: int
    rope: dict = field(default_factory=dict)        # layer type -> (theta, scaling dict or None)
    layer_types: tuple[str, ...] = ()               # "full_attention" | "sliding_attention"
    sliding_window: int = 0
    logit_softcap: float = 0.0

    @classmethod
    def from_hf(cls, cfg) -> "FastConfig":
        """From a transformers ``PretrainedConfig`` (or the dict of a config.json)."""
        c = cfg if isinstance(cfg, dict) else cfg.to_dict()
        mt = c.get("model_type")
        if mt not in FAMILIES:
            raise Unsupported(f"architecture {mt!r} is not one the fast decoder knows "
                              f"({', '.join(sorted(k for k in FAMILIES if k != 'gemma3'))})")
        fam = FAMILIES[mt]
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        if c.get("attn_logit_softcapping"):
            raise Unsupported("attention logit soft-capping (Gemma 2) is not in the fast decoder")
        n = c["num_hidden_layers"]
        window = c.get("sliding_window") or 0
        types = c.get("layer_types")
        if not types:
            use_sw = window and (c.get("use_sliding_window", mt == "mistral"))
            types = ["sliding_attention" if use_sw else "full_attention"] * n
        if mt.startswith("qwen") and c.get("use_sliding_window"):
            raise Unsupported("Qwen's sliding-window layers are not in the fast decoder")
        rope = _rope(c, set(types))
        scale = (c.get("query_pre_attn_scalar") or head_dim) ** -0.5
        return cls(model_type=mt, family=fam, vocab_size=c["vocab_size"], dim=c["hidden_size"],
                   layers=n, heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
                   head_dim=head_dim, hidden=c["intermediate_size"], eps=float(c["rms_norm_eps"]),
                   context_length=int(c.get("max_position_embeddings") or 2048),
                   tied=bool(c.get("tie_word_embeddings", False)),
                   attn_bias=bool(c.get("attention_bias", mt == "qwen2")),
                   mlp_bias=bool(c.get("mlp_bias", False)), attn_scale=scale,
                   rope_dim=int(head_dim * (c.get("partial_rotary_factor") or 1.0)),
                   rope=rope, layer_types=tuple(types), sliding_window=int(window or 0),
                   logit_softcap=float(c.get("final_logit_softcapping") or 0.0))


def _rope(c: dict, types: set[str]) -> dict:
    """layer type -> (theta, scaling) from transformers 5's ``rope_parameters`` (one dict, or
    one per layer type as Gemma 3 has) or 4.x's ``rope_theta`` / ``rope_scaling``."""
    params = c.get("rope_parameters")
    if params is None:
        params = dict(c.get("rope_scaling") or {}, rope_theta=c.get("rope_theta", 10000.0))
        if "sliding_attention" in types and c.get("rope_local_base_freq"):
            params = {"full_attention": params,
                      "sliding_attention": {"rope_theta": c["rope_local_base_freq"]}}
    out = {}
    for t in types:
        p = params.get(t, params) if isinstance(params.get(t, None), dict) else params
        kind = p.get("rope_type", p.get("type", "default")) or "default"
        if kind not in ("default", "linear", "llama3"):
            raise Unsupported(f"rope scaling {kind!r} is not in the fast decoder")
        out[t] = (float(p.get("rope_theta", 10000.0)), None if kind == "default" else dict(p, rope_type=kind))
    return out


def rope_inv_freq(dim: int, theta: float, scaling: dict | None):
    """Inverse frequencies [dim/2] in float32, computed as transformers'
    ``_compute_default_rope_parameters`` does (so fp32 parity holds to the last bit)."""
    import torch

    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if scaling is None:
        return inv
    if scaling["rope_type"] == "linear":
        return inv / scaling["factor"]
    # llama3 (transformers modeling_rope_utils._compute_llama3_parameters)
    factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    low_wl, high_wl = old / lo, old / hi
    wl = 2 * math.pi / inv
    out = torch.where(wl > low_wl, inv / factor, inv)
    smooth = (old / wl - lo) / (hi - lo)
    mid = (1 - smooth) * out / factor + smooth * out
    is_mid = ~(wl < high_wl) & ~(wl > low_wl)
    return torch.where(is_mid, mid, out)
