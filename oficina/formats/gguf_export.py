"""Hugging Face model folder -> one GGUF file, the job llama.cpp's convert_hf_to_gguf.py does.

    export_gguf("SmolLM2-135M-Instruct/", "smollm2.gguf", dtype="q8_0")

What goes in, in the order a reader of the file meets it:
  metadata   general.*, then the model's hyperparameters under "{arch}." (one ``HParam`` table per
             family), then the vocabulary under "tokenizer.*"
  tensors    every safetensors tensor, renamed by the family's table (HF module path -> gguf-py
             ``MODEL_TENSOR``), fixed up where llama.cpp's layout differs from HF's (the Q/K row
             permutation of Llama), and stored as ``dtype``

A family is one ``ArchSpec`` row in ``ARCHS``, keyed by config.json's ``model_type``. Adding
"mistral" (llama.cpp writes it as arch "llama", same tensors and permutation), "qwen2" (its own
arch, NEOX rope so no permutation, q/k/v biases) or "gemma3_text" (arch "gemma3", norms stored
as 1 + w, extra norms) is a new row plus whatever ``fixes`` it needs; nothing below the table
changes. The file is written atomically and streamed: one tensor in memory at a time.

Two readers are the reference: llama.cpp, and transformers' GGUF loader
(``modeling_gguf_pytorch_utils.load_gguf_checkpoint``, ``integrations/ggml.py``,
``integrations/gguf/gguf_tokenizer_mapping.py``), which must give back the same config, logits
and token ids. The transformers loader knows nothing of RoPE scaling or Llama's attention/MLP
biases, so files that carry them are right for llama.cpp but not for that round trip.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from gguf import Keys, LlamaFileType, TokenType
from gguf import MODEL_TENSOR as T
from safetensors import safe_open

from oficina.errors import FormatError
from oficina.formats.atomic import atomic_write

__all__ = ["ARCHS", "DTYPES", "ArchSpec", "HParam", "export_gguf", "register"]

Progress = Callable[[int, int], None]

# --outtype of convert_hf_to_gguf.py: GGML type for weight matrices, general.file_type.
DTYPES: dict[str, tuple[Q, LlamaFileType]] = {
    "f32": (Q.F32, LlamaFileType.ALL_F32),
    "f16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}


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


Fix = Callable[[np.ndarray, Any], np.ndarray]  # (float32 tensor in HF layout, config) -> GGUF layout


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers ``model_type`` becomes one llama.cpp architecture."""

    model_type: str  # config.json "model_type"
    arch: gguf.MODEL_ARCH  # its name (MODEL_ARCH_NAMES) is general.architecture and the key prefix
    tensors: Mapping[str, T]  # HF module path, "{bid}" for the layer -> GGUF tensor (gguf-py names)
    hparams: tuple[HParam, ...]
    fixes: Mapping[T, Fix] = field(default_factory=dict)
    # config -> (extra metadata, extra tensors): RoPE scaling, which llama.cpp spells per family
    rope: Callable[[Any], tuple[list[tuple[str, V, Any]], list[tuple[T, np.ndarray]]]] = lambda c: ([], [])

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

def _rope_interleave(heads: str) -> Fix:
    """HF Llama rotates the pairs (i, i + d/2) of each head ("rotate_half"): its conversion script
    (convert_llama_weights_to_hf.py) permuted the Q/K rows of Meta's checkpoints, which rotate
    adjacent pairs (2i, 2i + 1) as GGML's normal RoPE mode does. llama.cpp's LlamaModel.permute
    puts the rows back; transformers' LlamaTensorProcessor._reverse_permute_weights undoes it.
    Per head, rows [x0 .. x(d/2-1), y0 .. y(d/2-1)] become [x0, y0, x1, y1, ...]. K uses the
    KV head count. Biases (1-D) move the same way."""

    def fix(w: np.ndarray, config: Any) -> np.ndarray:
        n = getattr(config, heads)
        # (n_head * d, ...) -> (n_head, 2, d/2, ...) -> (n_head, d/2, 2, ...) -> (n_head * d, ...)
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    return fix


def _rope_theta(config: Any) -> float:
    return (config.rope_parameters or {}).get("rope_theta", 10000.0)


def _key_length(config: Any) -> int | None:
    # llama.cpp derives n_embd_head from embedding_length / head_count; say it only when it differs
    return config.head_dim if config.head_dim * config.num_attention_heads != config.hidden_size else None


def _llama_rope(config: Any) -> tuple[list[tuple[str, V, Any]], list[tuple[T, np.ndarray]]]:
    """RoPE scaling as LlamaModel writes it: "linear" as two keys, "llama3" as per-frequency
    divisors in a rope_freqs tensor (generate_extra_tensors). Others are refused."""
    rope = dict(config.rope_parameters or {})
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return [], []
    if kind == "linear":
        return [(Keys.Rope.SCALING_TYPE, V.STRING, "linear"), (Keys.Rope.SCALING_FACTOR, V.FLOAT32, rope["factor"])], []
    if kind == "llama3":
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
    raise FormatError(f"RoPE scaling {kind!r} cannot be exported to GGUF yet (supported: default, linear, llama3)")


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

_LLAMA_HPARAMS = (
    HParam(Keys.LLM.CONTEXT_LENGTH, V.UINT32, "max_position_embeddings"),
    HParam(Keys.LLM.EMBEDDING_LENGTH, V.UINT32, "hidden_size"),
    HParam(Keys.LLM.BLOCK_COUNT, V.UINT32, "num_hidden_layers"),
    HParam(Keys.LLM.FEED_FORWARD_LENGTH, V.UINT32, "intermediate_size"),
    HParam(Keys.Attention.HEAD_COUNT, V.UINT32, "num_attention_heads"),
    HParam(Keys.Attention.HEAD_COUNT_KV, V.UINT32, "num_key_value_heads"),
    HParam(Keys.Rope.FREQ_BASE, V.FLOAT32, _rope_theta),
    HParam(Keys.Attention.LAYERNORM_RMS_EPS, V.FLOAT32, "rms_norm_eps"),
    HParam(Keys.Rope.DIMENSION_COUNT, V.UINT32, "head_dim"),  # transformers reads it back as head_dim
    HParam(Keys.Attention.KEY_LENGTH, V.UINT32, _key_length),
    HParam(Keys.Attention.VALUE_LENGTH, V.UINT32, _key_length),
    HParam(Keys.LLM.VOCAB_SIZE, V.UINT32, "vocab_size"),
)

register(ArchSpec(
    model_type="llama",
    arch=gguf.MODEL_ARCH.LLAMA,
    tensors=_LLAMA_TENSORS,
    hparams=_LLAMA_HPARAMS,
    fixes={T.ATTN_Q: _rope_interleave("num_attention_heads"), T.ATTN_K: _rope_interleave("num_key_value_heads")},
    rope=_llama_rope,
))


# ---------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE only, stored as tokenizer.ggml.model "gpt2" (TextModel._set_vocab_gpt2).

_LLAMA3_SPLIT = (  # Meta-Llama-3 tokenizer.json
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (  # Qwen2 tokenizer.json: like Llama 3, but digits one at a time
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.json pre-tokenizer steps -> tokenizer.ggml.pre, the name llama.cpp (llama-vocab.cpp)
# keys its split regexes by. convert_hf_to_gguf.py finds it by hashing a sample's token ids; the
# steps say the same thing without a hash table. transformers rebuilds the split for the names in
# its GGUF_PRE_TOKENIZER_SPLITS, and falls back to GPT-2's for the rest ("smollm" included, so
# there its round trip splits digit runs differently from llama.cpp).
_BPE_PRE: dict[tuple[str, ...], str] = {
    ("ByteLevel",): "gpt-2",
    ("Digits",  "ByteLevel"): "smollm",  # SmolLM/SmolLM2 (convert_hf_to_gguf_update.py)
    ("Split " + _LLAMA3_SPLIT, "ByteLevel/raw"): "llama-bpe",
    ("Split " + _QWEN2_SPLIT, "ByteLevel/raw"): "qwen2",
}


def _pre_steps(pre: dict | None) -> tuple[str, ...]:
    """A tokenizer.json pre_tokenizer as a tuple of step names; odd settings make odd names."""
    if pre is None:
        return ()
    if pre.get("type") == "Sequence":
        return tuple(s for p in pre.get("pretokenizers", []) for s in _pre_steps(p))
    kind = pre.get("type", "?")
    if kind == "ByteLevel":
        return ("ByteLevel" + ("/prefix-space" if pre.get("add_prefix_space") else "")
                + ("" if pre.get("use_regex", True) else "/raw"),)
    if kind == "Digits":
        return ("Digits" if pre.get("individual_digits") else "Digits/grouped",)
    if kind == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert"):
        return ("Split " + str((pre.get("pattern") or {}).get("Regex")),)
    return (kind + json.dumps({k: v for k, v in pre.items() if k != "type"}, sort_keys=True),)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FormatError(f"cannot read {path}: {e}") from None


def _bpe_vocab(src: Path, n_vocab: int) -> tuple[list[str], list[int], str]:
    """Tokens, token types and pre-tokenizer name, padded to the embedding's rows with unused
    "[PAD{i}]" tokens (TextModel.get_vocab_base)."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise FormatError(f"{src} has no tokenizer.json; only byte-level BPE tokenizers can be exported to GGUF")
    tj = _read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise FormatError(f"{path}: a {model.get('type')} tokenizer cannot be exported to GGUF (only byte-level BPE)")
    # NFC is what Qwen2 declares; llama.cpp and transformers' GGUF loader both leave it out.
    if (normalizer := (tj.get("normalizer") or {}).get("type")) not in (None, "NFC"):
        raise FormatError(f"{path}: tokenizer normalizer {normalizer} has no GGUF equivalent")
    steps = _pre_steps(tj.get("pre_tokenizer"))
    if steps not in _BPE_PRE:
        shown = " + ".join(s[:40] for s in steps) or "none"
        raise FormatError(f"{path}: pre-tokenizer {shown} is not a byte-level BPE one GGUF can name "
                          f"(supported: {', '.join(sorted(_BPE_PRE.values()))})")
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    by_id = {i: tok for tok, i in model.get("vocab", {}).items()} | {i: t["content"] for i, t in added.items()}
    if by_id and max(by_id) >= n_vocab:
        raise FormatError(f"{path}: token id {max(by_id)} does not fit the model's {n_vocab} embedding rows")

    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        tok = by_id[i]
        if i in added:
            # added tokens are stored as text, not in the byte alphabet; <|...|> counts as special
            # even when unmarked (TextModel.does_token_look_special)
            special = added[i].get("special") or (tok.startswith("<|") and tok.endswith("|>"))
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(tok)
    return tokens, types, _BPE_PRE[steps]


def _write_tokenizer(w: gguf.GGUFWriter, src: Path, n_vocab: int) -> None:
    tokens, types, pre = _bpe_vocab(src, n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    # merges, bos/eos/unk/pad ids, add_bos/add_eos (from tokenizer_config or the post-processor's
    # template) and the chat template (tokenizer_config or chat_template.jinja): gguf-py reads
    # them the way convert_hf_to_gguf.py does.
    gguf.SpecialVocab(src, load_merges=True, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    config = src / "tokenizer_config.json"
    if config.is_file() and isinstance(prefix := _read_json(config).get("add_prefix_space"), bool):
        w.add_add_space_prefix(prefix)  # LlamaModel.set_vocab


# ---------------------------------------------------------------------------------------------
# Tensors.

# Buffers some checkpoints carry that are recomputed at load (convert_hf_to_gguf.py skips them too).
_SKIP = re.compile(r"\.rotary_emb\.inv_freq$")
_LAYER = re.compile(r"(?<=\.layers\.)(\d+)(?=\.)")


@dataclass
class _Tensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # HF (numpy) order; the writer reverses it
    qtype: Q
    load: Callable[[], np.ndarray]  # float32, GGUF layout


def _tensor_type(shape: tuple[int, ...], want: Q) -> Q:
    """ModelBase.prepare_tensors: 1-D tensors (norms, biases, RoPE factors) stay F32, and a matrix
    whose rows do not split into whole quant blocks falls back to F16."""
    if len(shape) < 2:
        return Q.F32
    return want if shape[-1] % gguf.GGML_QUANT_SIZES[want][0] == 0 else Q.F16


def _resolve(spec: ArchSpec, hf_name: str) -> tuple[T, str] | None:
    """"model.layers.3.self_attn.q_proj.weight" -> (ATTN_Q, "blk.3.attn_q.weight")"""
    module, _, suffix = hf_name.rpartition(".")
    bid = _LAYER.search(module)
    tensor = spec.tensors.get(_LAYER.sub("{bid}", module, count=1))
    if tensor is None:
        return None
    return tensor, gguf.TENSOR_NAMES[tensor].format(bid=bid.group(1) if bid else None) + "." + suffix


def _plan(spec: ArchSpec, config: Any, src: Path, stack: ExitStack, want: Q) -> list[_Tensor]:
    """Every tensor to write, in order, from the headers alone: nothing is loaded yet."""
    import torch  # safetensors hands out torch tensors: bf16 has no numpy dtype
    files = sorted(src.glob("model*.safetensors"))  # ModelBase.get_model_part_names(dir, "model", ...)
    if not files:
        raise FormatError(f"{src} has no model*.safetensors (pickled .bin checkpoints are not read)")
    plan: list[_Tensor] = []
    _, extra = spec.rope(config)
    for kind, data in extra:
        plan.append(_Tensor(gguf.TENSOR_NAMES[kind], data.shape, _tensor_type(data.shape, want), lambda d=data: d))

    seen: dict[str, str] = {}
    for file in files:
        st = stack.enter_context(safe_open(file, framework="pt"))
        for hf_name in st.keys():
            if _SKIP.search(hf_name) or (hf_name.startswith("lm_head.") and config.tie_word_embeddings):
                continue
            resolved = _resolve(spec, hf_name)
            if resolved is None:
                raise FormatError(f"{file.name}: tensor {hf_name!r} has no GGUF name for {spec.model_type}")
            tensor, name = resolved
            if name in seen:
                raise FormatError(f"{file.name}: tensor {hf_name!r} is also in {seen[name]}")
            seen[name] = file.name
            shape = tuple(st.get_slice(hf_name).get_shape())
            if tensor is T.TOKEN_EMBD and shape[0] != config.vocab_size:
                raise FormatError(f"{file.name}: {hf_name} has {shape[0]} rows, but vocab_size is {config.vocab_size}")
            fix = spec.fixes.get(tensor)

            def load(st=st, hf_name=hf_name, fix=fix) -> np.ndarray:
                data = st.get_tensor(hf_name).to(torch.float32).numpy()
                return fix(data, config) if fix else data

            plan.append(_Tensor(name, shape, _tensor_type(shape, want), load))
    _check_complete(spec, config, seen, src)
    return plan


def _check_complete(spec: ArchSpec, config: Any, seen: Mapping[str, str], src: Path) -> None:
    """Every weight the table names is there (a lost shard would otherwise make a file llama.cpp refuses)."""
    expected = []
    for module, tensor in spec.tensors.items():
        if tensor is T.OUTPUT and config.tie_word_embeddings:
            continue
        blocks = range(config.num_hidden_layers) if "{bid}" in module else [None]
        expected += [gguf.TENSOR_NAMES[tensor].format(bid=b) + ".weight" for b in blocks]
    missing = [n for n in expected if n not in seen]
    if missing:
        raise FormatError(f"{src}: {len(missing)} tensor(s) missing from the safetensors files, e.g. {missing[0]}")


# ---------------------------------------------------------------------------------------------

def _load_config(src: Path) -> tuple[ArchSpec, Any]:
    raw = _read_json(src / "config.json")
    model_type = raw.get("model_type")
    spec = ARCHS.get(model_type)
    if spec is None:
        raise FormatError(
            f"cannot export model_type {model_type!r} to GGUF (supported: {', '.join(sorted(ARCHS))})"
        )
    from transformers import AutoConfig  # the config class fills defaults and normalizes RoPE

    return spec, AutoConfig.from_pretrained(src)


def _write_metadata(w: gguf.GGUFWriter, spec: ArchSpec, config: Any, src: Path, file_type: LlamaFileType) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(src.resolve().name)  # ModelBase.prepare_metadata falls back to the folder name
    cast = {V.UINT32: int, V.FLOAT32: float, V.STRING: str, V.BOOL: bool}
    extra, _ = spec.rope(config)
    rows = [(h.key, h.vtype, h.value(config)) for h in spec.hparams] + extra
    for key, vtype, value in rows:
        if value is not None:
            w.add_key_value(key.format(arch=spec.arch_name), cast[vtype](value), vtype)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_tokenizer(w, src, config.vocab_size)


def export_gguf(src_dir: str | Path, out_path: str | Path, dtype: str = "f32",
                progress: Progress | None = None) -> Path:
    """Convert the model folder ``src_dir`` (config.json, model*.safetensors, tokenizer.json) to the
    GGUF file ``out_path``, its matrices stored as ``dtype`` (one of ``DTYPES``). ``progress(done,
    total)`` is called after each tensor. The file appears whole or not at all."""
    src, out = Path(src_dir), Path(out_path)
    if dtype not in DTYPES:
        raise FormatError(f"unknown GGUF dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    want, file_type = DTYPES[dtype]
    spec, config = _load_config(src)

    with ExitStack() as stack:
        plan = _plan(spec, config, src, stack, want)
        w = gguf.GGUFWriter(path=None, arch=spec.arch_name)
        _write_metadata(w, spec, config, src, file_type)
        for t in plan:
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
            w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=t.qtype)

        with atomic_write(out) as f:
            try:
                # GGUFWriter opens its own handle; atomic_write fsyncs the file after we close it
                w.write_header_to_file(path=Path(f.name))
                w.write_kv_data_to_file()
                w.write_ti_data_to_file()
                for done, t in enumerate(plan, 1):
                    w.write_tensor_data(gguf.quants.quantize(t.load(), t.qtype))
                    if progress:
                        progress(done, len(plan))
            finally:
                w.close()
    return out
