"""Fill the decoder from a GGUF file, a Hugging Face folder or an in-memory transformers model,
and cache the packed result so the next load is one mmap.

Names are mapped, with provenance, to llama.cpp's tensor names (gguf-py ``tensor_mapping.py``;
``blk.N.attn_q`` ...), which the decoder uses as its own; no name logic lives in the forward.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .config import FastConfig, Unsupported
from .model import Decoder
from .weights import FORMS, Dense, Embedding, Form, from_gguf, qk_perm

# Hugging Face name (inside model.layers.N.) -> llama.cpp name (inside blk.N.)
HF_LAYER = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
    "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm", "self_attn.k_norm.weight": "attn_k_norm",
    "post_attention_layernorm.weight": "ffn_norm",   # Llama's pre-MLP norm has this name
    "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
}
# Gemma 2/3 (sandwich norms): the same HF name means the norm *after* attention
HF_LAYER_SANDWICH = dict(HF_LAYER, **{
    "post_attention_layernorm.weight": "post_attention_norm",
    "pre_feedforward_layernorm.weight": "ffn_norm",
    "post_feedforward_layernorm.weight": "post_ffw_norm",
})
HF_GLOBAL = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm",
             "lm_head.weight": "output"}
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORMS = ("attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")
BIASES = ("attn_q.bias", "attn_k.bias", "attn_v.bias")
CACHE_VERSION = 1


def hf_to_gguf_names(state: dict[str, Tensor], cfg: FastConfig) -> dict[str, Tensor]:
    table = HF_LAYER_SANDWICH if cfg.family.sandwich else HF_LAYER
    out = {}
    for name, t in state.items():
        name = name.removeprefix("base_model.model.")
        if name in HF_GLOBAL:
            out[HF_GLOBAL[name]] = t
        elif name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            if rest not in table:
                raise Unsupported(f"weight {name} has no place in the fast decoder")
            out[f"blk.{i}.{table[rest]}"] = t
        elif not name.endswith("rotary_emb.inv_freq"):
            raise Unsupported(f"weight {name} has no place in the fast decoder")
    return out


def from_state(cfg: FastConfig, state: dict[str, Tensor], dtype: torch.dtype, slots: int,
               context: int) -> Decoder:
    """From float tensors with Hugging Face names (a safetensors folder, a merged peft model)."""
    w = hf_to_gguf_names(state, cfg)
    plus = 1.0 if cfg.family.norm_plus_one else 0.0

    def vec(name):
        t = w.get(name)
        return None if t is None else t.float() + (plus if not name.endswith(".bias") else 0.0)

    layers = []
    for i in range(cfg.layers):
        p: dict = {n: Dense(w[f"blk.{i}.{n}"].to(dtype)) for n in LINEARS}
        for n in NORMS:
            if (t := vec(f"blk.{i}.{n}")) is not None:
                p[n] = t
        for n in BIASES:
            if f"blk.{i}.{n}" in w:
                p[n] = w[f"blk.{i}.{n}"].float()
        layers.append(p)
    table = w["token_embd"]
    embed = Embedding(table.to(dtype) if dtype != torch.float32 else table.float())
    out = w.get("output", table if cfg.tied else None)
    if out is None:
        raise Unsupported("no output projection (lm_head) and the embeddings are not tied")
    return Decoder(cfg, embed, layers, vec("output_norm"), Dense(out.to(dtype)), dtype, slots, context)


class _GGUFTensor:
    """One tensor of a validated GGUF header, its data a read-only memmap: shape in ggml order
    ([K, N] for a matrix), ``tensor_type``, ``data`` rows of bytes (or of floats for F32/F16)."""

    def __init__(self, path: Path, info):
        import gguf
        import numpy as np

        self.shape = tuple(int(d) for d in info.shape)
        self.tensor_type = gguf.GGMLQuantizationType[info.type_name]
        rows = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        raw = np.memmap(path, np.uint8, "r", info.offset, (info.n_bytes,))
        if info.type_name in ("F32", "F16"):
            raw = raw.view(np.float32 if info.type_name == "F32" else np.float16)
        self.data = raw.reshape(rows, -1) if len(self.shape) > 1 else raw


def from_gguf_file(cfg: FastConfig, path: Path, dtype: torch.dtype, slots: int, context: int) -> Decoder:
    """Straight from the GGUF file's tensors into packed forms (weights.py says which, per type).
    The header is validated first (formats.gguf), tensors are read through a memmap."""
    from ...formats.gguf import read_header

    header = read_header(path)
    t = {x.name: _GGUFTensor(Path(path), x) for x in header.tensors}

    def vec(name):
        x = t.get(name)
        return None if x is None else torch.from_numpy(x.data.astype("float32"))  # a copy

    permuted = cfg.family.gguf_permuted_qk
    layers = []
    for i in range(cfg.layers):
        p: dict = {}
        for n in LINEARS:
            w = t.get(f"blk.{i}.{n}.weight")
            if w is None:
                raise Unsupported(f"the GGUF file has no blk.{i}.{n}.weight")
            perm = None
            if permuted and n in ("attn_q", "attn_k"):
                perm = qk_perm(cfg.heads if n == "attn_q" else cfg.kv_heads, w.shape[1])
            p[n] = from_gguf(w, dtype, perm)
        for n in NORMS:  # llama.cpp's converter already stored Gemma's (1 + w)
            if (x := vec(f"blk.{i}.{n}.weight")) is not None:
                p[n] = x
        for n in BIASES:
            if (x := vec(f"blk.{i}.{n}")) is not None:
                p[n] = x
        layers.append(p)
    e = t["token_embd.weight"]
    if e.tensor_type.name in ("F32", "F16"):
        embed = Embedding(torch.from_numpy(e.data.astype("float32")).to(dtype))
    else:  # the quantized rows, copied out of the file mapping (the packed cache holds them)
        embed = Embedding(torch.from_numpy(e.data.copy()), e.tensor_type, cfg.dim)
    out = from_gguf(t.get("output.weight", e), dtype)
    return Decoder(cfg, embed, layers, vec("output_norm.weight"), out, dtype, slots, context)


# -- the packed cache ---------------------------------------------------------------------------

def save_packed(dec: Decoder, path: Path) -> None:
    """All forms' tensors in one safetensors file, the form of each in its metadata; written to
    a temporary file and renamed, so a crash never leaves half a cache."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    forms: dict[str, str] = {}

    def put(name: str, v):
        if isinstance(v, Form):
            forms[name] = v.name
            for part, x in v.tensors().items():
                tensors[f"{name}::{part}"] = x.contiguous()
        else:
            tensors[name] = v.contiguous()

    for i, p in enumerate(dec.layers):
        for n, v in p.items():
            put(f"blk.{i}.{n}", v)
    put("output_norm", dec.norm)
    put("output", dec.output)
    tensors["token_embd"] = dec.embed.table.contiguous()
    meta = {"forms": json.dumps(forms), "version": str(CACHE_VERSION), "dtype": str(dec.dtype),
            "embed_qtype": "" if dec.embed.qtype is None else dec.embed.qtype.name}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_packed(cfg: FastConfig, path: Path, slots: int, context: int) -> Decoder | None:
    """The cached packed model, memory-mapped; None when the cache is missing or stale."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (OSError, Exception):  # missing or unreadable: rebuild
        return None
    if meta.get("version") != str(CACHE_VERSION):
        return None
    flat = load_file(str(path))
    forms = json.loads(meta["forms"])
    dtype = getattr(torch, meta["dtype"].removeprefix("torch."))

    def get(name: str):
        if name in forms:
            pre = name + "::"
            return FORMS[forms[name]].load({k[len(pre):]: v for k, v in flat.items() if k.startswith(pre)})
        return flat.get(name)

    layers = []
    for i in range(cfg.layers):
        pre = f"blk.{i}."
        names = {k.split("::")[0][len(pre):] for k in flat if k.startswith(pre)}
        layers.append({n: get(pre + n) for n in names})
    qtype = None
    if meta.get("embed_qtype"):
        import gguf

        qtype = gguf.GGMLQuantizationType[meta["embed_qtype"]]
    embed = Embedding(flat["token_embd"], qtype, cfg.dim)
    return Decoder(cfg, embed, layers, get("output_norm"), get("output"), dtype, slots, context)


def cached(build: Callable[[], Decoder], cfg: FastConfig, path: Path | None, slots: int, context: int) -> Decoder:
    if path is not None:
        dec = load_packed(cfg, path, slots, context)
        if dec is not None:
            return dec
    dec = build()
    if path is not None:
        try:
            save_packed(dec, path)
        except OSError:
            pass  # a read-only cache only costs the next load its conversion time
    return dec
