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

# Rows per GEMM of the server's batched prefill (``Decoder.fill`` with dense weights kept); see
# ``_blocked``. 128: a chat prompt pads to one block, a burst of eight to three.
FILL_BLOCK = 128

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
        self.dense: list[dict[str, Tensor]] = [{} for _ in layers]   # see keep_dense

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
        qpos = start[:, None] + torch.arange(T)                                # [B, T]
        L = int(qpos.max()) + 1
        masks = self._masks(qpos, L)
        first = int(slots[0])
        run = (first, first + B) if B > 1 and torch.equal(slots, torch.arange(first, first + B)) else None

        def attend(i: int, kind: str, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            q, k, v = (t.view(B, T, -1, cfg.head_dim).transpose(1, 2) for t in (q, k, v))
            o = self._attend(i, kind, q, k, v, slots, start, L, masks[kind], run)
            return o.transpose(1, 2).reshape(B * T, -1)

        x = self._layers(tokens.reshape(-1), qpos.reshape(-1), attend)         # [B*T, D] f32
        if not logits:
            return None
        x = x.view(B, T, -1)
        if last_only:
            x = x[:, -1:]
        h = rms_norm(x, self.norm, cfg.eps).to(self.dtype)
        logits = self.output(h.reshape(-1, cfg.dim)).float().view(B, -1, cfg.vocab_size)
        if cfg.logit_softcap:
            logits = torch.tanh(logits / cfg.logit_softcap) * cfg.logit_softcap
        return logits[:, -1] if last_only else logits

    @torch.inference_mode()
    def fill(self, parts: list[tuple[int, int, list[int]]]) -> None:
        """Several prompts' next ids into their slots' caches in one pass, no logits: ``parts``
        holds (slot, start, ids), each a run of any length. The linears see all rows together
        (one weight pass: past the kernels' crossover one dequantize serves every prompt), the
        attention runs per prompt over its own cache (the server's batched prefill)."""
        tokens = torch.tensor([t for _, _, ids in parts for t in ids])
        qpos = torch.cat([torch.arange(s0, s0 + len(ids)) for _, s0, ids in parts])
        edges = [0]
        for _, _, ids in parts:
            edges.append(edges[-1] + len(ids))
        spans = [(torch.tensor([slot]), torch.tensor([s0]), s0 + len(ids), self._masks(qpos[a:b][None], s0 + len(ids)))
                 for (slot, s0, ids), a, b in zip(parts, edges, edges[1:])]

        def attend(i: int, kind: str, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out = []
            for (slot, s0, L, masks), a, b in zip(spans, edges, edges[1:]):
                qa, ka, va = (t[a:b].view(1, b - a, -1, self.cfg.head_dim).transpose(1, 2) for t in (q, k, v))
                out.append(self._attend(i, kind, qa, ka, va, slot, s0, L, masks[kind], None)[0].transpose(0, 1))
            return torch.cat(out).reshape(len(tokens), -1)

        self._layers(tokens, qpos, attend, self.dense)

    def keep_dense(self, budget: int) -> int:
        """Keep a dequantized copy of every packed layer weight for ``fill`` when it takes at
        most ``budget`` bytes; returns the bytes kept (0: fill dequantizes per pass past the
        kernels' crossover instead). With the copy every fill runs one path, a GEMM whose rows
        do not change each other's results (``_blocked``), so a prompt's cache is the same
        whether it was filled alone or with others (batch-invariant), and no pass dequantizes."""
        forms = [(d, name, f) for p, d in zip(self.layers, self.dense) for name, f in p.items() if isinstance(f, Form)]
        size = torch.empty((), dtype=self.dtype).element_size()
        need = sum(f.shape[0] * f.shape[1] * size for _, _, f in forms if f.name != "dense")
        if need > budget:
            return 0
        for d, name, f in forms:
            d.setdefault(name, f.w if f.name == "dense" else f.dequantize(self.dtype))
        return need

    def _masks(self, qpos: Tensor, L: int) -> dict[str, Tensor]:
        """Boolean attention masks [B, 1, T, L] per layer type for queries at ``qpos`` [B, T]."""
        kpos = torch.arange(L)
        causal = kpos[None, None, :] <= qpos[:, :, None]                       # [B, T, L]
        masks = {"full_attention": causal[:, None]}
        if self.cfg.sliding_window:
            near = (qpos[:, :, None] - kpos[None, None, :]) < self.cfg.sliding_window
            masks["sliding_attention"] = (causal & near)[:, None]              # [B, 1, T, L]
        return masks

    def _layers(self, tokens: Tensor, qpos: Tensor, attend, dense: list[dict] | None = None) -> Tensor:
        """Every layer over N rows (``tokens``, ``qpos`` [N]): the residual stream [N, D] float32
        after the last one. ``attend(i, kind, q, k, v)`` with q/k/v [N, heads, hd] after rope
        writes the cache and returns the attention output [N, H * hd]; ``dense`` (per layer)
        holds weights to use instead of the packed forms."""
        cfg = self.cfg
        x = self.embed(tokens[None])[0]                                        # [N, D] f32
        if self.scale:
            x = x * torch.tensor(self.scale, dtype=x.dtype)
        N = x.shape[0]
        ropes = {t: (c[qpos][:, None], s[qpos][:, None]) for t, (c, s) in self.rope.items()}  # [N, 1, hd]
        for i, p in enumerate(self.layers):
            kind = cfg.layer_types[i]
            if dense and dense[i]:
                p = {**p, **dense[i]}
            h = rms_norm(x, p["attn_norm"], cfg.eps).to(self.dtype)
            if "attn_qkv" in p:
                q, k, v = _lin(p, "attn_qkv", h).split(self.qkv, -1)
            else:
                q, k, v = _lin(p, "attn_q", h), _lin(p, "attn_k", h), _lin(p, "attn_v", h)
            q = q.reshape(N, cfg.heads, cfg.head_dim)
            k = k.reshape(N, cfg.kv_heads, cfg.head_dim)
            v = v.reshape(N, cfg.kv_heads, cfg.head_dim)
            if cfg.family.qk_norm:
                q = rms_norm(q, p["attn_q_norm"], cfg.eps)
                k = rms_norm(k, p["attn_k_norm"], cfg.eps)
            cos, sin = ropes[kind]
            q = rope(q.float(), cos, sin).to(self.dtype)
            k = rope(k.float(), cos, sin).to(self.dtype)
            o = _lin(p, "attn_output", attend(i, kind, q, k, v.to(self.dtype)))
            if cfg.family.sandwich:
                o = rms_norm(o, p["post_attention_norm"], cfg.eps)
            x = x + o.float()
            h = rms_norm(x, p["ffn_norm"], cfg.eps).to(self.dtype)
            if "ffn_gate_up" in p:
                gate, up = _lin(p, "ffn_gate_up", h).split(cfg.hidden, -1)
            else:
                gate, up = _lin(p, "ffn_gate", h), _lin(p, "ffn_up", h)
            m = _lin(p, "ffn_down", self.act(gate) * up)
            if cfg.family.sandwich:
                m = rms_norm(m, p["post_ffw_norm"], cfg.eps)
            x = x + m.float()
        return x

    def _attend(self, i: int, kind: str, q: Tensor, k: Tensor, v: Tensor, slots: Tensor, start: Tensor,
                L: int, mask: Tensor, run: tuple[int, int] | None) -> Tensor:
        """Write k/v [B, KV, T, hd] at ``start`` of ``slots`` and attend q [B, H, T, hd] over the
        first L cached positions -> [B, H, T, hd]. One slot writes a run of T; several write one
        position each (decoding)."""
        cfg = self.cfg
        kc, vc = self.k[i], self.v[i]
        B, T = q.shape[0], q.shape[2]
        if B == 1:
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
                K, V = kc[slots, :, :L], vc[slots, :, :L]                      # [B, KV, L, hd]
        return F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=cfg.attn_scale,
                                              enable_gqa=cfg.heads != cfg.kv_heads)


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Zeros whose pages the OS provides only when first written (numpy's calloc; torch.zeros
    writes every byte): a 4096-token cache costs memory as the sequences grow, not up front."""
    import numpy as np

    size = torch.empty((), dtype=dtype).element_size()
    raw = np.zeros(int(np.prod(shape)) * size, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def _lin(p: dict, name: str, x: Tensor) -> Tensor:
    w = p[name]
    y = _blocked(x, w) if isinstance(w, Tensor) else w(x)
    b = p.get(name + ".bias")
    return y if b is None else y + b.to(y.dtype)


def _blocked(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w.T`` in blocks of exactly ``FILL_BLOCK`` rows (the last one zero-padded). oneDNN
    picks its blocking, and so its float summation order, by the number of rows: one row's
    result changes with what else is in the product (measured: K=1536 from 33 rows on). With
    every product the same size, a row's result depends on that row alone (batch invariance,
    as in Thinking Machines' "Defeating Nondeterminism in LLM Inference", 2025)."""
    m, k = x.shape
    x = x.to(w.dtype)
    if m % FILL_BLOCK:
        x = torch.cat([x, x.new_zeros(FILL_BLOCK - m % FILL_BLOCK, k)])
    out = x.new_empty(x.shape[0], w.shape[0])
    wt = w.t()
    for i in range(0, x.shape[0], FILL_BLOCK):
        torch.mm(x[i:i + FILL_BLOCK], wt, out=out[i:i + FILL_BLOCK])
    return out[:m]
