"""What a model is, read from its files without building it: ``ModelInfo``.

GGUF: the validated header (metadata keys per the GGUF spec, ``{arch}.block_count`` etc.).
Hugging Face folders: ``config.json`` plus the safetensors headers (shapes and dtypes only).
Config key names differ between families; the alias table below says where each concept lives.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError

# concept -> config.json keys that hold it, first match wins (GPT-2 uses n_*, T5 d_model/num_*).
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "heads": ("num_attention_heads", "n_head", "num_heads"),
    "kv_heads": ("num_key_value_heads", "n_head_kv", "num_kv_heads"),
    "context_length": ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"),
    "embedding_length": ("hidden_size", "n_embd", "d_model", "dim"),
    "feed_forward_length": ("intermediate_size", "n_inner", "d_ff", "ffn_dim"),
    "vocab_size": ("vocab_size",),
}

# GGUF architectures / HF model types that are not decoder-only.
ENCODER_ONLY = {"bert", "nomic-bert", "jina-bert-v2", "roberta", "xlm-roberta", "distilbert",
                "albert", "electra", "deberta", "deberta-v2", "mpnet", "modernbert", "t5encoder"}
ENCODER_DECODER = {"t5", "mt5", "bart", "mbart", "marian", "pegasus", "umt5"}

# Tensor-name patterns -> component, for both GGUF (llama.cpp names) and HF names.
COMPONENTS: tuple[tuple[str, str], ...] = (
    (r"(token_embd|embed_tokens|embeddings?\.|wte|wpe|shared|position_embd|token_types)", "embeddings"),
    (r"(norm|Norm|ln_)", "norms"),  # "Norm": BERT's LayerNorm
    (r"(attn|attention|self_attn|SelfAttention|EncDecAttention|\.q_proj|\.k_proj|\.v_proj|\.o_proj)", "attention"),
    (r"(ffn|mlp|intermediate|DenseReluDense|\.output\.dense|feed_forward)", "feed_forward"),
    (r"(^output\.|lm_head|cls\.|pooler|classifier|score)", "head"),
)

# general.file_type (llama.cpp LLAMA_FTYPE) -> name, from gguf-py constants LlamaFileType.
_DTYPE_BITS = {"F64": 64, "F32": 32, "F16": 16, "BF16": 16, "I8": 8, "U8": 8, "I16": 16,
               "I32": 32, "I64": 64, "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8,
               "INT8": 8, "INT4": 4}


def component(name: str) -> str:
    for pattern, comp in COMPONENTS:
        if re.search(pattern, name):
            return comp
    return "other"


@dataclass
class ModelInfo:
    format: str  # "gguf" | "hf"
    architecture: str  # e.g. "llama", "LlamaForCausalLM"
    family: str  # e.g. "llama", "gemma3", "bert"
    kind: str  # "decoder-only" | "encoder-only" | "encoder-decoder"
    name: str | None
    parameters: int
    layers: int | None
    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    context_length: int | None
    embedding_length: int | None
    feed_forward_length: int | None
    vocab_size: int | None
    quantization: dict[str, dict[str, int]]  # component -> {type: tensor count}
    file_type: str  # overall, e.g. "Q4_1", "F32", "mixed"
    bits_per_weight: float
    file_size: int
    chat_template: bool
    license: str | None = None
    tensors: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """The small part stored in a manifest for `list`."""
        return {"architecture": self.architecture, "family": self.family, "kind": self.kind,
                "parameters": self.parameters, "quantization": self.file_type,
                "bits_per_weight": round(self.bits_per_weight, 2)}

    def to_dict(self, tensors: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not tensors:
            d.pop("tensors")
        return d


def describe(folder: Path, fmt: str | None = None) -> ModelInfo:
    folder = Path(folder)
    if fmt is None:
        fmt = "gguf" if (folder.is_file() or list(folder.glob("*.gguf"))) else "hf"
    if fmt == "gguf":
        path = folder if folder.is_file() else sorted(folder.glob("*.gguf"))[0]
        return _describe_gguf(path)
    return _describe_hf(folder)


def _type_summary(tensors: list[tuple[str, tuple[int, ...], str]]) -> tuple[dict, str]:
    groups: dict[str, Counter] = defaultdict(Counter)
    weighted: Counter = Counter()
    for name, shape, tname in tensors:
        groups[component(name)][tname] += 1
        n = 1
        for d in shape:
            n *= d
        weighted[tname] += n
    quant = {g: dict(c.most_common()) for g, c in sorted(groups.items())}
    # The overall type is what most weights are stored as (norms stay F32 in any GGUF).
    main = weighted.most_common(1)[0][0] if weighted else "unknown"
    return quant, main


def _describe_gguf(path: Path) -> ModelInfo:
    from ..formats.gguf import read_header

    h = read_header(path)
    arch = h.get("general.architecture")
    if not isinstance(arch, str):
        raise FormatError(f"{path.name}: GGUF has no general.architecture")

    def key(k: str, default=None):
        return h.get(f"{arch}.{k}", default)

    tensors = [(t.name, tuple(t.shape), t.type_name) for t in h.tensors]
    n_params = sum(t.n_elements for t in h.tensors)
    n_bytes = sum(t.n_bytes for t in h.tensors)
    heads = _first_int(key("attention.head_count"))
    embd = key("embedding_length")
    head_dim = key("attention.key_length") or (embd // heads if embd and heads else None)
    tokens = h.get("tokenizer.ggml.tokens")
    vocab = key("vocab_size") or (len(tokens) if isinstance(tokens, list) else getattr(tokens, "length", None))
    quant, main = _type_summary(tensors)
    main = _file_type_name(h.get("general.file_type")) or main
    kind = ("encoder-only" if arch in ENCODER_ONLY
            else "encoder-decoder" if arch in ENCODER_DECODER else "decoder-only")
    return ModelInfo(
        format="gguf", architecture=arch, family=arch, kind=kind,
        name=h.get("general.name"), parameters=n_params,
        layers=key("block_count"), heads=heads,
        kv_heads=_first_int(key("attention.head_count_kv")) or heads, head_dim=head_dim,
        context_length=key("context_length"), embedding_length=embd,
        feed_forward_length=_first_int(key("feed_forward_length")), vocab_size=vocab,
        quantization=quant, file_type=main,
        bits_per_weight=8 * n_bytes / max(n_params, 1), file_size=path.stat().st_size,
        chat_template=isinstance(h.get("tokenizer.chat_template"), str),
        license=h.get("general.license"), tensors=tensors)


def _file_type_name(value) -> str | None:
    """llama.cpp's overall label (general.file_type, enum LLAMA_FTYPE), e.g. "Q4_K_M": a mix
    keeps embeddings and some layers at higher precision, so no single tensor type names it."""
    from gguf.constants import LlamaFileType

    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        return None


def _first_int(v):
    """Some GGUF keys are per-layer arrays (e.g. head_count_kv in hybrid models)."""
    if isinstance(v, list):
        return max(v) if v else None
    return v


def _describe_hf(folder: Path) -> ModelInfo:
    from safetensors import safe_open

    cfg_path = folder / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{cfg_path}: cannot read config.json ({e})") from None
    if not isinstance(cfg, dict):
        raise FormatError(f"{cfg_path}: config.json is not an object")
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}

    def get(concept: str):
        for src in (cfg, text_cfg):
            for k in CONFIG_ALIASES[concept]:
                if isinstance(src.get(k), int):
                    return src[k]
        return None

    # `oficina quantize` int8/int4 folders: a linear layer is stored as codes (``qweight``, two
    # int4 codes per byte) and group scales; count its logical weights, as GGUF counts blocks
    packed = cfg.get("oficina_quantization")
    packed_modules = set(packed.get("modules") or []) if isinstance(packed, dict) else set()
    tensors, n_params, n_bits, size = [], 0, 0, 0
    for p in sorted(folder.glob("*.safetensors")):
        size += p.stat().st_size
        with safe_open(str(p), framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                n = 1
                for d in shape:
                    n *= d
                bits = n * _DTYPE_BITS.get(dtype, 32)
                module, _, leaf = name.rpartition(".")
                if module in packed_modules and leaf == "scales":
                    n_bits += bits  # storage of the weights counted under qweight
                    continue
                if module in packed_modules and leaf == "qweight" and len(shape) == 2:
                    dtype = "INT4" if dtype == "U8" else "INT8"
                    shape = (shape[0], shape[1] * (2 if dtype == "INT4" else 1))
                    n = shape[0] * shape[1]
                n_params += n
                n_bits += bits
                tensors.append((name, shape, dtype))
    model_type = str(cfg.get("model_type", "unknown"))
    archs = cfg.get("architectures") or [model_type]
    if cfg.get("is_encoder_decoder") or model_type in ENCODER_DECODER:
        kind = "encoder-decoder"
    elif model_type in ENCODER_ONLY:
        kind = "encoder-only"
    else:
        kind = "decoder-only"
    heads, embd = get("heads"), get("embedding_length")
    head_dim = cfg.get("head_dim") or text_cfg.get("head_dim") or (
        cfg.get("d_kv") if kind == "encoder-decoder" else None) or (
        embd // heads if embd and heads else None)
    quant, main = _type_summary(tensors)
    chat = (folder / "chat_template.jinja").is_file() or _tokenizer_has_template(folder)
    return ModelInfo(
        format="hf", architecture=str(archs[0]), family=model_type, kind=kind,
        name=cfg.get("_name_or_path") or None, parameters=n_params,
        layers=get("layers"), heads=heads, kv_heads=get("kv_heads") or heads, head_dim=head_dim,
        context_length=get("context_length"), embedding_length=embd,
        feed_forward_length=get("feed_forward_length"), vocab_size=get("vocab_size"),
        quantization=quant, file_type=main, bits_per_weight=n_bits / max(n_params, 1),
        file_size=size, chat_template=chat, license=None, tensors=tensors)


def _tokenizer_has_template(folder: Path) -> bool:
    p = folder / "tokenizer_config.json"
    if not p.is_file():
        return False
    try:
        return bool(json.loads(p.read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False
