"""The decoder, top to bottom (nanoGPT / gpt-fast style): one forward for every supported family,
the differences read from ``FastConfig.family``, a static KV cache with one row per slot.

Shapes: B sequences (slots), T new tokens each (T = 1 when decoding, the chunk length when
prefilling one slot), D model width, H / KV query / key-value heads of width hd, L keys attended.
The residual stream stays float32; matrix products run in ``dtype`` (bf16 where the CPU has
AVX512-BF16 or AMX, float32 otherwise or when asked for parity tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import FastConfig, Unsupported, rope_inv_freq
from .weights import Embedding, Form

ACTS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """RMSNorm in float32 (Zhang & Sennrich 2019), torch's one fused op; Gemma's (1 + w) is
    folded into w at load."""
    return F.rms_norm(x.float(), (x.shape[-1],), w, eps)


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x * cos + rotate_half(x) * sin`` in three ops: ``sin`` holds the sign of rotate_half
    (``[-sin, sin]``), so rotate_half becomes a roll."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


class Decoder:
    def __init__(self, cfg: FastConfig, embed: Embedding, layers: list[dict], norm: Tensor,
                 output: Form, dtype: torch.dtype, slots: int, context: int):
        if cfg.rope_dim != cfg.head_dim:
            raise Unsupported("partial rotary embeddings are not in the fast decoder")
        self.cfg, self.embed, self.layers, self.norm, self.output = cfg, embed, layers, norm, output
        self.dtype, self.context = dtype, context
        self.act = ACTS[cfg.family.act]
        self.qkv = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim)
        self.scale = math.sqrt(cfg.dim) if cfg.family.embed_scale else 0.0
        # rope tables per layer type: [context, hd] float32, as transformers builds cos/sin
        pos = torch.arange(context, dtype=torch.float32)
        self.rope = {}
        for t, (theta, scaling) in cfg.rope.items():
            freqs = pos[:, None] * rope_inv_freq(cfg.head_dim, theta, scaling)[None, :]
            emb = torch.cat((freqs, freqs), -1)
            sin = emb.sin()
            sin[:, :cfg.head_dim // 2] *= -1                          # rotate_half's sign
            self.rope[t] = (emb.cos(), sin)
        shape = (slots, cfg.kv_heads, context, cfg.head_dim)
        self.k = [_lazy_zeros(shape, dtype) for _ in range(cfg.layers)]  # static KV cache
        self.v = [_lazy_zeros(shape, dtype) for _ in range(cfg.layers)]

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Prefix reuse: slot ``dst`` starts with the first n cached positions of ``src``."""
        for kc, vc in zip(self.k, self.v):
            kc[dst, :, :n] = kc[src, :, :n]
            vc[dst, :, :n] = vc[src, :, :n]

    @torch.inference_mode()
    def forward(self, tokens: Tensor, slots: Tensor, start: Tensor, last_only: bool = True,
                logits: bool = True) -> Tensor | None:
        """tokens [B, T] at positions start[b] + t of slots[b] -> float32 logits [B, V] for the
        last position (or [B, T, V]; None with ``logits=False``: only the cache is filled)."""
        cfg = self.cfg
        B, T = tokens.shape
        x = self.embed(tokens)                                                 # [B, T, D] f32
        if self.scale:
            x = x * torch.tensor(self.scale, dtype=x.dtype)
        qpos = start[:, None] + torch.arange(T)                                # [B, T]
        L = int(qpos.max()) + 1
        kpos = torch.arange(L)
        causal = kpos[None, None, :] <= qpos[:, :, None]                       # [B, T, L]
        masks = {"full_attention": causal[:, None]}
        if cfg.sliding_window:
            near = (qpos[:, :, None] - kpos[None, None, :]) < cfg.sliding_window
            masks["sliding_attention"] = (causal & near)[:, None]              # [B, 1, T, L]
        ropes = {t: (c[qpos][:, None], s[qpos][:, None]) for t, (c, s) in self.rope.items()}
        one = B == 1
        first = int(slots[0])
        run = (first, first + B) if not one and torch.equal(slots, torch.arange(first, first + B)) else None
        for i, p in enumerate(self.layers):
            kind = cfg.layer_types[i]
            h = rms_norm(x, p["attn_norm"], cfg.eps).to(self.dtype).reshape(B * T, -1)
            if "attn_qkv" in p:
                q, k, v = _lin(p, "attn_qkv", h).split(self.qkv, -1)
            else:
                q, k, v = _lin(p, "attn_q", h), _lin(p, "attn_k", h), _lin(p, "attn_v", h)
            q = q.reshape(B, T, cfg.heads, cfg.head_dim)
            k = k.reshape(B, T, cfg.kv_heads, cfg.head_dim)
            v = v.reshape(B, T, cfg.kv_heads, cfg.head_dim)
            if cfg.family.qk_norm:
                q = rms_norm(q, p["attn_q_norm"], cfg.eps)
                k = rms_norm(k, p["attn_k_norm"], cfg.eps)
            cos, sin = ropes[kind]                                             # [B, 1, T, hd]
            q = rope(q.transpose(1, 2).float(), cos, sin).to(self.dtype)       # [B, H, T, hd]
            k = rope(k.transpose(1, 2).float(), cos, sin).to(self.dtype)       # [B, KV, T, hd]
            v = v.transpose(1, 2).to(self.dtype)
            kc, vc = self.k[i], self.v[i]
            mask = masks[kind]
            if one:
                s0, sl = int(start[0]), int(slots[0])
                kc[sl, :, s0:s0 + T] = k[0]
                vc[sl, :, s0:s0 + T] = v[0]
                # one new token sees every cached key (or the window's): no mask to build or apply
                lo = max(0, L - cfg.sliding_window) if kind == "sliding_attention" and T == 1 else 0
                K, V = kc[sl:sl + 1, :, lo:L], vc[sl:sl + 1, :, lo:L]
                mask = None if T == 1 else mask
            else:  # T == 1: each sequence writes its own position
                kc[slots, :, start] = k[:, :, 0]
                vc[slots, :, start] = v[:, :, 0]
                if run is not None:  # consecutive slots: a view, not a copy of their caches
                    K, V = kc[run[0]:run[1], :, :L], vc[run[0]:run[1], :, :L]
                else:
                    K, V = kc[slots, :, :L], vc[slots, :, :L]                  # [B, KV, L, hd]
            o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=cfg.attn_scale,
                                               enable_gqa=cfg.heads != cfg.kv_heads)
            o = _lin(p, "attn_output", o.transpose(1, 2).reshape(B * T, -1)).view(B, T, -1)
            if cfg.family.sandwich:
                o = rms_norm(o, p["post_attention_norm"], cfg.eps)
            x = x + o.float()
            h = rms_norm(x, p["ffn_norm"], cfg.eps).to(self.dtype).reshape(B * T, -1)
            if "ffn_gate_up" in p:
                gate, up = _lin(p, "ffn_gate_up", h).split(cfg.hidden, -1)
            else:
                gate, up = _lin(p, "ffn_gate", h), _lin(p, "ffn_up", h)
            m = self.act(gate) * up
            m = _lin(p, "ffn_down", m).view(B, T, -1)
            if cfg.family.sandwich:
                m = rms_norm(m, p["post_ffw_norm"], cfg.eps)
            x = x + m.float()
        if not logits:
            return None
        if last_only:
            x = x[:, -1:]
        h = rms_norm(x, self.norm, cfg.eps).to(self.dtype)
        logits = self.output(h.reshape(-1, cfg.dim)).float().view(B, -1, cfg.vocab_size)
        if cfg.logit_softcap:
            logits = torch.tanh(logits / cfg.logit_softcap) * cfg.logit_softcap
        return logits[:, -1] if last_only else logits


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Zeros whose pages the OS provides only when first written (numpy's calloc; torch.zeros
    writes every byte): a 4096-token cache costs memory as the sequences grow, not up front."""
    import numpy as np

    size = torch.empty((), dtype=dtype).element_size()
    raw = np.zeros(int(np.prod(shape)) * size, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def _lin(p: dict, name: str, x: Tensor) -> Tensor:
    y = p[name](x)
    b = p.get(name + ".bias")
    return y if b is None else y + b.to(y.dtype)
