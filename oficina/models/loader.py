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
from ..formats.digest import sha256_file
from ..report import reporter
from . import torch_quant
from .info import ModelInfo, check_loadable, describe

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
                info: ModelInfo | None = None, cache: Path | None = None,
                label: str | None = None) -> Loaded:
    """Load a model folder (or .gguf file). With ``cache``, a GGUF model is converted once into
    a Hugging Face folder there (config, tokenizer, dequantized safetensors): reading GGUF
    metadata through gguf-py and transformers costs ~20 s for a 135M model, the cached folder
    under a second. ``label`` names the model in errors (a registry name, not its snapshot)."""
    folder = Path(folder)
    label = label or folder.name
    info = info or describe(folder, fmt)
    check_loadable(info, label)
    if info.format == "gguf":
        gguf = gguf_file(folder)
        if cache is not None:
            return _load_gguf_cached(gguf, info, dtype, cache, label)
        model, tokenizer = _from_pretrained(gguf.parent, info, dtype, label, gguf_file=gguf.name)
    else:
        model, tokenizer = _from_pretrained(folder, info, dtype, label)
    return Loaded(model, tokenizer, info, folder)


def auto_class(kind: str) -> str:
    """The transformers Auto class that holds a model of ``kind`` (``ModelInfo.kind``)."""
    return AUTO_CLASSES[kind]


def quiet_transformers() -> None:
    """transformers logs and shows progress bars of its own; ours are enough."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")


def load_tokenizer(folder: Path, label: str | None = None, **kwargs):
    """The tokenizer of a model folder (or of the GGUF file ``gguf_file=`` in it), quietly, never
    running the model's own code; a broken one is one ``FormatError`` line naming ``label``."""
    import transformers

    quiet_transformers()
    label = label or Path(folder).name
    with no_tqdm():
        # False, not the default None, which asks "[y/N]" on a terminal
        try:
            return transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, **kwargs)
        except KeyError as e:  # converters index the file's dicts: tokenizer.json, GGUF metadata
            raise FormatError(f"cannot load {label}: its tokenizer lacks the entry {_key(e)} "
                              f"(in tokenizer.json, or tokenizer.ggml.* in a GGUF)") from None
        except Exception as e:  # the tokenizers library raises plain Exception for a bad tokenizer.json
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FormatError(f"cannot load {label}: its tokenizer does not load ({first})") from None


def load_torch(folder: Path, cls: str, dtype: torch.dtype | None = None, labels: tuple[str, ...] = (),
               pad_id: int | None = None, label: str | None = None, architecture: str = "model",
               **kwargs) -> torch.nn.Module:
    """The weights of a Hugging Face folder (or ``gguf_file=`` in it) in transformers class
    ``cls`` ("AutoModelForCausalLM", a task's class...), on the device, not yet in eval mode.
    A folder ``oficina quantize`` packed keeps its own precision (``torch_quant.py``) unless
    ``labels`` asks for a new classification head. ``labels`` sizes that head; a decoder
    classifier finds the last token by ``pad_id``. Errors are one ``FormatError`` line."""
    import transformers

    quiet_transformers()
    folder = Path(folder)
    label = label or folder.name
    if labels:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={lab: i for i, lab in enumerate(labels)})
    try:
        with no_tqdm():
            if not labels and "gguf_file" not in kwargs and torch_quant.is_packed(folder):
                model = torch_quant.load_packed(folder, cls)  # via the module: a test spies on it
            else:
                model = getattr(transformers, cls).from_pretrained(
                    str(folder), dtype=dtype or torch.float32, trust_remote_code=False, **kwargs)
    except KeyError as e:  # transformers' GGUF converters index dicts from the file
        raise FormatError(f"cannot load {label}: its files lack the entry {_key(e)} that a "
                          f"{architecture} model needs") from None
    except (OSError, ValueError, RuntimeError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"cannot load {label} ({architecture}): {first}") from None
    if labels and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id  # decoder classifiers find the last token by the pad id
    return model.to(device())


def _from_pretrained(folder: Path, info: ModelInfo, dtype: torch.dtype | None, label: str, **kwargs):
    tokenizer = load_tokenizer(folder, label, **kwargs)
    model = load_torch(folder, auto_class(info.kind), dtype, label=label, architecture=info.architecture,
                       **kwargs)
    return model.eval(), tokenizer


def _key(e: KeyError) -> str:
    return repr(str(e.args[0])) if e.args else "(unnamed)"


def gguf_file(folder: Path) -> Path:
    folder = Path(folder)
    return sorted(folder.glob("*.gguf"))[0] if folder.is_dir() else folder


def gguf_cache_folder(gguf: Path, cache: Path) -> Path:
    """Where the Hugging Face form (config, tokenizer, weights) of a GGUF file is cached; it is
    complete when it has a config.json."""
    key = gguf.resolve().name.removeprefix("sha256-") if gguf.is_symlink() else sha256_file(gguf)[7:]
    return Path(cache) / f"gguf-{key[:32]}"


def _load_gguf_cached(gguf: Path, info: ModelInfo, dtype, cache: Path, label: str) -> Loaded:
    target = gguf_cache_folder(gguf, cache)
    hf_info = replace(info, format="hf")
    if (target / "config.json").is_file():
        model, tokenizer = _from_pretrained(target, hf_info, dtype, label)
        return Loaded(model, tokenizer, info, target)
    with gguf_progress(f"converting {info.architecture} GGUF to torch (once)", gguf.stat().st_size):
        model, tokenizer = _from_pretrained(gguf.parent, info, torch.float32, label, gguf_file=gguf.name)
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        with no_tqdm(), reporter().progress("saving the converted weights", None):
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
    if not getattr(original, "ours", False):  # gguf_progress's bar stays
        gguf_utils.tqdm = functools.partial(original, disable=True)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def gguf_progress(description: str, total_bytes: int):
    """Our bar (bytes, speed, ETA) over transformers' GGUF dequantization, fed by the loop
    transformers wraps in tqdm (``modeling_gguf_pytorch_utils``: one step per gguf-py
    ``ReaderTensor``, whose ``n_bytes`` is its size in the file)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    with reporter().progress(description, total_bytes, unit="bytes") as bar:
        def counted(tensors, *args, **kwargs):
            for t in tensors:
                yield t
                bar.advance(int(getattr(t, "n_bytes", 0)))

        counted.ours = True
        original, gguf_utils.tqdm = gguf_utils.tqdm, counted
        try:
            yield
        finally:
            gguf_utils.tqdm = original
