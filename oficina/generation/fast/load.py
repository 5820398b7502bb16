"""Fill the decoder from a GGUF file, a Hugging Face folder or an in-memory transformers model,
and cache the packed result so the next load is one mmap.

Names are mapped, with provenance, to llama.cpp's tensor names (gguf-py ``tensor_mapping.py``;
``blk.N.attn_q`` ...), which the decoder uses as its own; no name logic lives in the forward.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ...formats.gguf import read_header
from .config import FastConfig, Unsupported
from .model import Decoder
from .weights import FORMS, Dense, Embedding, Form, from_gguf, fuse, qk_perm

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
CACHE_VERSION = 6  # the int4 layout of rows a block apart (v4) plus the int4pair form (v5)
FUSED = {"attn_qkv": ("attn_q", "attn_k", "attn_v"), "ffn_gate_up": ("ffn_gate", "ffn_up")}


def fuse_layer(p: dict) -> dict:
    """q|k|v and gate|up stacked into one weight each where their forms agree (model.py splits
    the product again)."""
    for name, parts in FUSED.items():
        f = fuse([p[n] for n in parts])
        if f is None:
            continue
        for n in parts:
            del p[n]
        p[name] = f
        if name == "attn_qkv" and "attn_q.bias" in p:
            p["attn_qkv.bias"] = torch.cat([p.pop(n + ".bias") for n in parts])
    return p


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
    """From tensors with Hugging Face names (a safetensors folder, a merged peft model); linear
    weights may already be packed forms (an ``oficina quantize`` folder, ``quantized.py``)."""
    w = hf_to_gguf_names(state, cfg)
    plus = 1.0 if cfg.family.norm_plus_one else 0.0

    def vec(name):
        t = w.get(name)
        return None if t is None else t.float() + (plus if not name.endswith(".bias") else 0.0)

    layers = []
    for i in range(cfg.layers):
        p: dict = {n: _linear(w[f"blk.{i}.{n}"], dtype) for n in LINEARS}
        for n in NORMS:
            if (t := vec(f"blk.{i}.{n}")) is not None:
                p[n] = t
        for n in BIASES:
            if f"blk.{i}.{n}" in w:
                p[n] = w[f"blk.{i}.{n}"].float()
        layers.append(fuse_layer(p))
    if "token_embd" not in w and cfg.tied and "output" in w:  # a tied pair saved under one name
        w["token_embd"] = w["output"]
    table = w["token_embd"]
    embed = Embedding(table.to(dtype) if dtype != torch.float32 else table.float())
    out = w.get("output", table if cfg.tied else None)
    if out is None:
        raise Unsupported("no output projection (lm_head) and the embeddings are not tied")
    return Decoder(cfg, embed, layers, vec("output_norm"), Dense(out.to(dtype)), dtype, slots, context)


def _linear(w: Tensor | Form, dtype: torch.dtype) -> Form:
    """A float weight as a dense form; one already packed (``quantized.py``) as it is."""
    return w if isinstance(w, Form) else Dense(w.to(dtype))


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
        layers.append(fuse_layer(p))
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
    try:
        with os.fdopen(fd, "wb") as f:
            _write_aligned(tensors, meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_aligned(tensors: dict[str, Tensor], meta: dict[str, str], f) -> None:
    """A safetensors file (the format's header + raw bytes) whose every tensor starts on a
    64-byte boundary, so the memory-mapped views can feed the int kernels directly. Padding is
    explicit ``__padN`` byte tensors (the format allows no holes) and header spaces."""
    dtypes = {v: k for k, v in _DTYPES.items()}
    entries: dict = {}
    blobs: list[bytes] = []
    off = 0
    for i, (name, t) in enumerate(tensors.items()):
        if (pad := -off % ALIGN):
            entries[f"__pad{i}"] = {"dtype": "U8", "shape": [pad], "data_offsets": [off, off + pad]}
            blobs.append(bytes(pad))
            off += pad
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        entries[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    entries["__metadata__"] = meta
    header = json.dumps(entries).encode()
    header += b" " * (-(8 + len(header)) % ALIGN)
    f.write(len(header).to_bytes(8, "little"))
    f.write(header)
    for b in blobs:
        f.write(b)


def load_packed(cfg: FastConfig, path: Path, slots: int, context: int) -> Decoder | None:
    """The cached packed model, memory-mapped; None when the cache is missing or stale."""
    try:
        flat, meta = _mmap_safetensors(Path(path))
    except (OSError, ValueError, KeyError):  # missing, unreadable or not ours: rebuild
        return None
    if meta.get("version") != str(CACHE_VERSION):
        return None
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


ALIGN = 64
_DTYPES = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16, "U8": torch.uint8,
           "I8": torch.int8, "I32": torch.int32, "I64": torch.int64}


def _mmap_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors of a safetensors file as views of one copy-on-write memory map: nothing is read
    until used, pages are shared with the OS file cache, and weights a run never touches (the
    prefill-only unpacked codes of a short chat) never become resident."""
    import mmap

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n < (1 << 28):
            raise ValueError("not a safetensors file")
        header = json.loads(f.read(n))
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        dtype = _DTYPES[h["dtype"]]
        count = (b - a) // torch.empty((), dtype=dtype).element_size()
        if count and (base + a) % ALIGN == 0:
            t = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + a)
        else:  # the int kernels read with aligned vector loads: a misaligned view crashes them
            t = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + a).clone() if count \
                else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(h["shape"])
    return out, meta


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
