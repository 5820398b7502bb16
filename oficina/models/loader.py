"""Load a model folder (GGUF or Hugging Face) into transformers' PyTorch classes.

GGUF weights are dequantized into torch tensors by transformers' GGUF integration (which reads
them with gguf-py); the header is validated by ``formats.gguf`` first, because transformers
trusts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import FormatError
from ..report import reporter
from .info import ModelInfo, describe

# kind -> the transformers Auto class that holds it
AUTO_CLASSES = {
    "decoder-only": "AutoModelForCausalLM",
    "encoder-decoder": "AutoModelForSeq2SeqLM",
    "encoder-only": "AutoModel",
}


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerFast
    info: ModelInfo
    folder: Path


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_folder(folder: Path, fmt: str | None = None, dtype: torch.dtype | None = None,
                info: ModelInfo | None = None, cache: Path | None = None) -> Loaded:
    """Load a model folder (or .gguf file). With ``cache``, a GGUF model is converted once into
    a Hugging Face folder there (config, tokenizer, dequantized safetensors): reading GGUF
    metadata through gguf-py and transformers costs ~20 s for a 135M model, the cached folder
    under a second."""
    folder = Path(folder)
    info = info or describe(folder, fmt)
    if info.format == "gguf":
        gguf = sorted(folder.glob("*.gguf"))[0] if folder.is_dir() else folder
        if cache is not None:
            return _load_gguf_cached(gguf, info, dtype, cache)
        model, tokenizer = _from_pretrained(gguf.parent, info, dtype, gguf_file=gguf.name)
    else:
        from ..quant.torch_quant import is_packed

        load = _from_packed if is_packed(folder) else _from_pretrained
        model, tokenizer = load(folder, info, dtype)
    return Loaded(model, tokenizer, info, folder)


def _from_pretrained(folder: Path, info: ModelInfo, dtype: torch.dtype | None, **kwargs):
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[info.kind])
    _quiet_transformers()
    try:
        with no_tqdm():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), **kwargs)
            model = auto.from_pretrained(str(folder), dtype=dtype or torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"cannot load {info.architecture} model from {folder.name}: {first}") from None
    model.eval().to(device())
    return model, tokenizer


def load_tokenizer(folder: Path, info: ModelInfo | None = None):
    """The tokenizer of a Hugging Face folder alone (no weights)."""
    import transformers

    _quiet_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"cannot load the tokenizer from {Path(folder).name}: {first}") from None


def _from_packed(folder: Path, info: ModelInfo, dtype):
    """A folder ``oficina quantize`` packed (int8/int4 linears, or fp16/bf16): it keeps its own
    precision, whatever ``dtype`` asks (oficina.quant.torch_quant)."""
    import transformers

    from ..quant.torch_quant import load_packed

    _quiet_transformers()
    with no_tqdm():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        model = load_packed(folder, AUTO_CLASSES[info.kind])
    return model.to(device()), tokenizer


def gguf_file(folder: Path) -> Path:
    folder = Path(folder)
    return sorted(folder.glob("*.gguf"))[0] if folder.is_dir() else folder


def gguf_cache_folder(gguf: Path, cache: Path) -> Path:
    """Where the Hugging Face form (config, tokenizer, weights) of a GGUF file is cached; it is
    complete when it has a config.json."""
    from ..registry.store import sha256_file

    key = gguf.resolve().name.removeprefix("sha256-") if gguf.is_symlink() else sha256_file(gguf)[7:]
    return Path(cache) / f"gguf-{key[:32]}"


def _load_gguf_cached(gguf: Path, info: ModelInfo, dtype, cache: Path) -> Loaded:
    target = gguf_cache_folder(gguf, cache)
    hf_info = replace(info, format="hf")
    if (target / "config.json").is_file():
        model, tokenizer = _from_pretrained(target, hf_info, dtype)
        return Loaded(model, tokenizer, info, target)
    with reporter().progress(f"converting {info.architecture} GGUF to torch (once)", None):
        model, tokenizer = _from_pretrained(gguf.parent, info, torch.float32, gguf_file=gguf.name)
        model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            with no_tqdm():
                model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    if dtype not in (None, torch.float32):
        model = model.to(dtype)
    return Loaded(model, tokenizer, info, target)


@contextlib.contextmanager
def no_tqdm():
    """transformers shows tqdm bars of its own unconditionally (GGUF conversion, writing
    shards); ours are shown instead."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    # tqdm reads TQDM_DISABLE only at import, so the module's own name is swapped for the call;
    # the shard writer uses transformers' switchable tqdm
    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


def _quiet_transformers() -> None:
    """transformers logs and shows progress bars of its own; ours are enough."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
