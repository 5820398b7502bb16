"""Hugging Face model folder -> one GGUF file, the job llama.cpp's convert_hf_to_gguf.py (and,
for the K-quant mixes, llama-quantize) does; and the GGUF's weights back into that model.

    export_gguf("SmolLM2-135M-Instruct/", "smollm2.gguf", dtype="Q4_K_M")
    load_gguf_weights("smollm2.gguf", hf_model)     # the file's (dequantized) weights, in place

What goes in, in the order a reader of the file meets it:
  metadata   general.*, then the model's hyperparameters under "{arch}." (one ``HParam`` table per
             family), then the vocabulary under "tokenizer.*" (``gguf_tokenizer.py``)
  tensors    every safetensors tensor, renamed by the family's table (HF module path -> gguf-py
             ``MODEL_TENSOR``), fixed up where llama.cpp's layout differs from HF's (the Q/K row
             permutation of Llama, Gemma's 1 + w norms), and stored as the GGML type the file
             type gives it (``formats.ggml.mixes``: "Q4_K_M" is mostly Q4_K with some Q6_K)

A family is one ``ArchSpec`` row in ``ARCHS`` (``gguf_archs.py``), keyed by config.json's
``model_type``; a new family is a new row there, nothing here changes. The file is written atomically and streamed: one tensor
in memory at a time.

Two readers are the reference: llama.cpp, and transformers' GGUF loader
(``modeling_gguf_pytorch_utils.load_gguf_checkpoint``, ``integrations/ggml.py``,
``integrations/gguf/gguf_tokenizer_mapping.py``), which must give back the same config, logits
and token ids. The transformers loader knows nothing of RoPE scaling or Llama's attention/MLP
biases, so files that carry them are right for llama.cpp but not for that round trip.
"""

from __future__ import annotations

import math
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import gguf
import numpy as np
from gguf import MODEL_TENSOR as T
from gguf import GGUFValueType as V
from safetensors import safe_open

from ..errors import FormatError
from .atomic import atomic_write
from .ggml import mixes
from .ggml.types import TYPES
from .gguf import read_header
from .gguf_archs import ARCHS, ArchSpec, HParam, Layout, register, resolve_name
from .gguf_tokenizer import write_tokenizer
from .untrusted import read_json

__all__ = ["ARCHS", "ArchSpec", "HParam", "Layout", "export_gguf", "load_gguf_weights", "plan_types", "register"]

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# Tensors.

# Buffers some checkpoints carry that are recomputed at load (convert_hf_to_gguf.py skips them too).
_SKIP = re.compile(r"\.rotary_emb\.inv_freq$")


@dataclass
class _Tensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # HF (numpy) order; the writer reverses it
    qtype: str  # GGML type name (formats.ggml.types.TYPES)
    load: Callable[[], np.ndarray]  # float32, GGUF layout



def plan_types(ft: mixes.FileType, config: Any, tensors: list[tuple[str, tuple[int, ...]]]) -> list[str]:
    """The GGML type of each (GGUF name, numpy shape) in a file of type ``ft``."""
    n_layer = config.num_hidden_layers
    gqa = max(1, config.num_attention_heads // (getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    tied = "output.weight" not in {name for name, _ in tensors}
    types = []
    for name, shape in tensors:
        bid = re.match(r"blk\.(\d+)\.", name)
        at = mixes.Layer(int(bid.group(1)), n_layer, gqa) if bid else None
        types.append(mixes.tensor_type(ft, name, shape, at, tied_output=tied))
    return types


def _plan(spec: ArchSpec, config: Any, src: Path, stack: ExitStack, ft: mixes.FileType) -> list[_Tensor]:
    """Every tensor to write, in order, from the headers alone: nothing is loaded yet."""
    import torch  # safetensors hands out torch tensors: bf16 has no numpy dtype
    files = sorted(src.glob("model*.safetensors"))  # ModelBase.get_model_part_names(dir, "model", ...)
    if not files:
        raise FormatError(f"{src} has no model*.safetensors (pickled .bin checkpoints are not read)")
    plan: list[_Tensor] = []
    _, extra = spec.rope(config)
    for kind, data in extra:
        plan.append(_Tensor(gguf.TENSOR_NAMES[kind] + ".weight", data.shape, "", lambda d=data: d))

    seen: dict[str, str] = {}
    for file in files:
        st = stack.enter_context(safe_open(file, framework="pt"))
        for hf_name in st.keys():
            if _SKIP.search(hf_name) or (hf_name.startswith("lm_head.") and config.tie_word_embeddings):
                continue
            resolved = resolve_name(spec, hf_name)
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
                return fix.to_gguf(data, config) if fix else data

            plan.append(_Tensor(name, shape, "", load))
    _check_complete(spec, config, seen, src)
    for t, qtype in zip(plan, plan_types(ft, config, [(t.name, t.shape) for t in plan])):
        t.qtype = qtype
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
    raw = read_json(src / "config.json")
    model_type = raw.get("model_type")
    spec = ARCHS.get(model_type)
    if spec is None:
        raise FormatError(
            f"cannot export model_type {model_type!r} to GGUF (supported: {', '.join(sorted(ARCHS))})"
        )
    from transformers import AutoConfig  # the config class fills defaults and normalizes RoPE

    config = AutoConfig.from_pretrained(src)
    spec.check(config)
    return spec, config


def _write_metadata(w: gguf.GGUFWriter, spec: ArchSpec, config: Any, src: Path, ft: mixes.FileType) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(src.resolve().name)  # ModelBase.prepare_metadata falls back to the folder name
    cast = {V.UINT32: int, V.FLOAT32: float, V.STRING: str, V.BOOL: bool}
    extra, _ = spec.rope(config)
    rows = [(h.key, h.vtype, h.value(config)) for h in spec.hparams] + extra
    for key, vtype, value in rows:
        if value is not None:
            w.add_key_value(key.format(arch=spec.arch_name), cast[vtype](value), vtype)
    w.add_file_type(ft.ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_tokenizer(w, src, config.vocab_size)


def file_type(name: str) -> mixes.FileType:
    """A GGUF file type by name, any case ("q4_k_m"); FormatError naming the choices otherwise."""
    try:
        return mixes.get(name)
    except KeyError as e:
        raise FormatError(str(e.args[0])) from None


def export_gguf(src_dir: str | Path, out_path: str | Path, dtype: str = "f32",
                progress: Progress | None = None) -> Path:
    """Convert the model folder ``src_dir`` (config.json, model*.safetensors, tokenizer.json) to the
    GGUF file ``out_path`` of file type ``dtype`` ("f16", "q8_0", "Q4_K_M": any name in
    ``formats.ggml.mixes.FILE_TYPES`` or its aliases, any case). ``progress(done, total)`` is
    called after each tensor. The file appears whole or not at all."""
    src, out = Path(src_dir), Path(out_path)
    ft = file_type(dtype)
    spec, config = _load_config(src)

    with ExitStack() as stack:
        plan = _plan(spec, config, src, stack, ft)
        w = gguf.GGUFWriter(path=None, arch=spec.arch_name)
        _write_metadata(w, spec, config, src, ft)
        for t in plan:
            qtype = TYPES[t.qtype].qtype
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, qtype)
            w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=qtype)

        with atomic_write(out) as f:
            try:
                # GGUFWriter opens its own handle; atomic_write fsyncs the file after we close it
                w.write_header_to_file(path=Path(f.name))
                w.write_kv_data_to_file()
                w.write_ti_data_to_file()
                for done, t in enumerate(plan, 1):
                    w.write_tensor_data(TYPES[t.qtype].quantize(t.load()))
                    if progress:
                        progress(done, len(plan))
            finally:
                w.close()
    return out


# ---------------------------------------------------------------------------------------------
# Import: the same tables, read backwards.

def load_gguf_weights(path: str | Path, model: Any) -> Any:
    """Copy the weights of the GGUF file ``path`` (dequantized to float32) into ``model``, a
    transformers model of the family that file was exported from, in place; return it.

    The file's header is validated first (``formats.gguf.read_header``). This is how a quantized
    file's quality is measured without a second copy of the model: transformers' own GGUF loader
    gives the same weights (tests/test_quant.py), but rebuilds the model and the tokenizer."""
    import torch

    read_header(Path(path))
    config = model.config
    spec = ARCHS.get(config.model_type)
    if spec is None:
        raise FormatError(f"no GGUF table for model_type {config.model_type!r} (supported: {', '.join(sorted(ARCHS))})")
    names: dict[str, tuple[str, T]] = {}  # GGUF name -> (HF name, kind)
    for hf_name, _ in model.named_parameters():
        resolved = resolve_name(spec, hf_name)
        if resolved:
            names[resolved[1]] = (hf_name, resolved[0])
    params = dict(model.named_parameters())
    reader = gguf.GGUFReader(path)
    done = set()
    for t in reader.tensors:
        if t.name not in names:
            continue  # rope_freqs: recomputed by the model from its config
        hf_name, kind = names[t.name]
        qtype = gguf.GGMLQuantizationType(t.tensor_type).name
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions fastest first
        data = TYPES[qtype].dequantize(np.asarray(t.data)).reshape(shape)
        fix = spec.fixes.get(kind)
        if fix:
            data = fix.from_gguf(data, config)
        p = params[hf_name]
        if tuple(p.shape) != shape:
            raise FormatError(f"{Path(path).name}: {t.name} is {shape}, the model's {hf_name} is {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(torch.from_numpy(np.array(data, dtype=np.float32)).to(p.dtype))  # a writable copy
        done.add(hf_name)
    missing = [n for n in params if n not in done and not (n.startswith("lm_head.") and config.tie_word_embeddings)]
    if missing:
        raise FormatError(f"{Path(path).name}: no tensor for {len(missing)} weight(s), e.g. {missing[0]}")
    return model
