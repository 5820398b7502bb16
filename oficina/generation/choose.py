"""Which runner a loaded model gets: our fast decoder when its architecture, weights and adapters
allow, transformers otherwise, with the reason kept in ``capabilities.note`` (``run --verbose``
prints it). ``OFICINA_RUNNER=transformers`` forces the fallback (comparisons, bug hunts)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..models.loader import gguf_file
from ..models.torch_quant import KEY
from .fast import FastConfig, FastRunner, Unsupported, cpu_has_bf16
from .fast.load import CACHE_VERSION, cached, from_gguf_file, from_state
from .fast.quantized import unpack_state
from .hf_runner import TransformersRunner


def choose_runner(model):
    """A Runner for an ``oficina.generation.session.Model``."""
    eos = model._eos_ids()
    try:
        if os.environ.get("OFICINA_RUNNER", "") == "transformers":
            raise Unsupported("OFICINA_RUNNER=transformers asks for it")
        return fast_runner(model, eos)
    except Unsupported as e:
        why = f"transformers runner: {e}"
    ctx = min(model.options.num_ctx, model.info.context_length or model.options.num_ctx)
    return TransformersRunner(model.loaded.model, eos, ctx, max_batch=model.max_batch,
                              note=why, num_batch=model.options.num_batch)


def fast_runner(model, eos) -> FastRunner:
    loaded = model.loaded
    dtype = torch.bfloat16 if cpu_has_bf16() else torch.float32
    adapters = getattr(getattr(model.entry, "manifest", None), "adapters", None)
    # the built transformers module is the source when adapters were merged into it, or when it
    # is all there is; a GGUF whose converted folder exists is read from the file (packed) even
    # after something built the module (its first load converts the file that way)
    if getattr(loaded, "loaded", True) and (adapters or loaded.info.format != "gguf"
                                           or getattr(loaded, "hf_folder", None) is None):
        module = loaded.model
        if hasattr(module, "peft_model") or hasattr(module, "peft_config"):
            raise Unsupported("prompt/prefix adapters run only in transformers")
        cfg = FastConfig.from_hf(module.config)
        ctx = min(model.options.num_ctx, cfg.context_length)
        state, dtype, how = _weights(module.state_dict(), getattr(module.config, KEY, None), dtype)
        dec = from_state(cfg, state, dtype, model.max_batch, ctx)
        why = ("fast runner: adapters merged into the weights at load" if adapters
               else f"fast runner: {how} (read from the loaded transformers model)")
    else:
        if loaded.hf_folder is None:
            raise Unsupported("no config.json for this model")
        cfg = FastConfig.from_hf(json.loads((loaded.hf_folder / "config.json").read_text()))
        ctx = min(model.options.num_ctx, cfg.context_length)
        tag = "bf16" if dtype == torch.bfloat16 else "f32"
        if loaded.info.format == "gguf":
            path = gguf_file(loaded.source)

            # the version is in the name: processes running other versions keep their own file
            packed = (loaded.hf_folder.parent / f"{loaded.hf_folder.name}-fast{CACHE_VERSION}-{tag}.safetensors"
                      if model.cache is not None else None)
            dec = cached(lambda: from_gguf_file(cfg, path, dtype, model.max_batch, ctx), cfg, packed,
                         model.max_batch, ctx)
            why = f"fast runner: {loaded.info.file_type} GGUF weights kept packed"
        else:
            meta = json.loads((loaded.hf_folder / "config.json").read_text()).get(KEY)
            state, dtype, how = _weights(_safetensors(loaded.source), meta, dtype)
            dec = from_state(cfg, state, dtype, model.max_batch, ctx)
            why = f"fast runner: {how}"
    return FastRunner(dec, eos, num_batch=model.options.num_batch, note=why)


def _weights(state: dict, meta: dict | None, dtype: torch.dtype) -> tuple[dict, torch.dtype, str]:
    """The state to build from, the dtype to run in and how the weights are held: an
    ``oficina quantize`` int8/int4 folder's codes go into packed forms (``fast/quantized.py``),
    float weights run dense."""
    if meta and meta.get("to") in ("int8", "int4"):
        return unpack_state(state, meta, dtype), dtype, f"`oficina quantize` {meta['to']} weights kept packed"
    dtype = _dense_dtype(state, dtype)
    return state, dtype, f"safetensors weights as {str(dtype).removeprefix('torch.')}"


def _dense_dtype(state: dict, fast: torch.dtype) -> torch.dtype:
    """Float32 checkpoints run in float32 (their numbers are transformers' to the last bits);
    16-bit ones in bf16 where the CPU has it."""
    w = next((t for n, t in state.items() if n.endswith("proj.weight")), None)
    return torch.float32 if w is None or w.dtype == torch.float32 else fast


def _safetensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise Unsupported("no safetensors weights (a .bin checkpoint needs transformers)")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state
