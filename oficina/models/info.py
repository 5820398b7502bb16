"""What a model is, read from its files without building it: ``ModelInfo``.

GGUF: the validated header (metadata keys per the GGUF spec, ``{arch}.block_count`` etc.).
Hugging Face folders: ``config.json`` plus the safetensors headers (shapes and dtypes only).
Config key names differ between families; the alias table below says where each concept lives.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..formats.untrusted import read_json

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


# GGUF keys (after "{arch}.") that hold a count, one per model or one per layer (gguf docs).
_GGUF_COUNTS = ("block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "attention.key_length",
                "attention.value_length", "vocab_size", "expert_count", "expert_used_count")
# tokenizer arrays -> the GGUF item type each must have (gguf docs, "Tokenizer"; llama-vocab.cpp)
_GGUF_TOKENIZER_ARRAYS = {"tokenizer.ggml.tokens": "STRING", "tokenizer.ggml.scores": "FLOAT32",
                          "tokenizer.ggml.token_type": "INT32", "tokenizer.ggml.merges": "STRING"}
# tokenizer.ggml.model -> arrays it cannot work without (what transformers' GGUF converters read)
_GGUF_TOKENIZER_NEEDS = {"llama": ("tokenizer.ggml.scores",), "t5": ("tokenizer.ggml.scores",),
                         "gpt2": ("tokenizer.ggml.merges",)}


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_gguf_metadata(h, arch: str) -> None:
    """The metadata transformers and our own code use, with the types the spec gives it: a
    hostile file with ``embedding_length = "4096"`` or tokens that are numbers is refused here
    with a sentence, not with a TypeError deep inside a converter."""
    name = h.path.name
    for k in _GGUF_COUNTS:
        v = h.get(f"{arch}.{k}")
        if v is None:
            continue
        if isinstance(v, list) and v and all(_is_count(x) for x in v):
            continue
        if not _is_count(v):
            raise FormatError(f"{name}: {arch}.{k} must be a non-negative integer, not "
                              f"{type(v).__name__} {str(v)[:40]!r}")
    tokens = h.get("tokenizer.ggml.tokens")
    lengths = {}
    for k, item in _GGUF_TOKENIZER_ARRAYS.items():
        v = h.get(k)
        if v is None:
            continue
        got = v.type_name if hasattr(v, "type_name") else (
            "STRING" if all(isinstance(x, str) for x in v) else
            "INT32" if all(isinstance(x, int) and not isinstance(x, bool) for x in v) else
            "FLOAT32" if all(isinstance(x, float) for x in v) else "mixed") if isinstance(v, list) else type(v).__name__
        ok = got == item or (item == "FLOAT32" and got in ("FLOAT32", "FLOAT64")) or (
            item == "INT32" and got in ("INT32", "UINT32", "INT8", "UINT8", "INT16", "INT64")) or (
            isinstance(v, list) and not v)
        if not ok:
            raise FormatError(f"{name}: {k} must be an array of {item.lower()} items, not {got.lower()}")
        lengths[k] = v.length if hasattr(v, "length") else len(v)
    n = lengths.get("tokenizer.ggml.tokens")
    for k in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        if k in lengths and n is not None and lengths[k] != n:
            raise FormatError(f"{name}: {k} has {lengths[k]} entries for {n} tokens")
    model = h.get("tokenizer.ggml.model")
    if tokens is not None:
        for k in _GGUF_TOKENIZER_NEEDS.get(model, ()):
            if h.get(k) is None:
                raise FormatError(f"{name}: a {model!r} tokenizer needs {k}, which the file lacks")


def _describe_gguf(path: Path) -> ModelInfo:
    # here, not at the top: loads numpy (gguf); `oficina list` describes no file
    from ..formats.gguf import read_header

    h = read_header(path)
    arch = h.get("general.architecture")
    if not isinstance(arch, str):
        raise FormatError(f"{path.name}: GGUF has no general.architecture")
    _check_gguf_metadata(h, arch)

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

    cfg = read_json(folder / "config.json")
    refuse_remote_code(folder, cfg)
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


def refuse_remote_code(folder: Path, cfg: dict) -> None:
    """``auto_map`` names Python files shipped with the model that transformers would import
    (and, on a terminal, stop to ask "[y/N]" about). oficina never runs code from model files."""
    for name, data in (("config.json", cfg), ("tokenizer_config.json", None)):
        if data is None:
            p = folder / name
            if not p.is_file():
                continue
            data = read_json(p)
        if data.get("auto_map"):
            classes = ", ".join(sorted({str(v).split(".")[-1] if isinstance(v, str) else str(v)
                                        for v in (data["auto_map"].values()
                                                  if isinstance(data["auto_map"], dict) else [data["auto_map"]])}))[:120]
            raise FormatError(f"{folder.name}: {name} asks to run the model's own Python code "
                              f"(auto_map: {classes}); oficina does not run code from model files")


def _tokenizer_has_template(folder: Path) -> bool:
    p = folder / "tokenizer_config.json"
    if not p.is_file():
        return False
    try:
        return bool(json.loads(p.read_text()).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


# A layer index in a tensor name: GGUF "blk.3.", HF "layers.3." / "layer.3." (BERT) / "h.3."
# (GPT-2) / "block.3." (T5)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:blk|layers?|h|block)\.(\d+)\.")


def declared_parameters(info: ModelInfo) -> int:
    """A lower bound on the parameters the header or config describes: per layer at least the
    attention's query and output projections (2·d²) and a two-matrix feed-forward (2·d·ffn),
    plus the token embeddings. Every architecture here has at least these."""
    d = info.embedding_length or 0
    return (info.layers or 0) * (2 * d * d + 2 * d * (info.feed_forward_length or 0)) + (info.vocab_size or 0) * d


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get now (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_loadable(info: ModelInfo, label: str) -> None:
    """Refuse, before anything is built, a model whose header or config describes more than its
    files hold (transformers would allocate and initialise every declared layer: a 3 KB GGUF
    saying ``block_count = 100000`` runs for hours) or more than this machine's memory."""
    found = {int(m.group(1)) for name, _, _ in info.tensors if (m := _LAYER_INDEX.search(name))}
    present = max(found) + 1 if found else 0
    if info.layers and found and info.layers > present:
        raise FormatError(f"{label}: declares {info.layers:,} layers but its weights hold {present}; "
                          f"the file does not hold the model it describes")
    declared = declared_parameters(info)
    if declared > 2 * info.parameters + 1_000_000:
        raise FormatError(f"{label}: its {'header' if info.format == 'gguf' else 'config.json'} describes "
                          f"at least {declared:,} parameters but its weights hold {info.parameters:,}")
    need, free = info.parameters * 4, available_memory()  # loaded as float32
    if free is not None and need > free:
        raise FormatError(f"{label}: loading it needs about {need / 1e9:.1f} GB of memory and "
                          f"{free / 1e9:.1f} GB is available")
