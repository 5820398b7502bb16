"""Registry models in, quantized registry models or GGUF files out: the library behind
``oficina quantize``, ``oficina export`` and ``oficina create --quantize``.

    quantize_entry(reg, "smollm2", TorchQuantConfig("int4"))    # -> Entry "smollm2:int4"
    export_entry(reg, "smollm2", "Q4_K_M", "smollm2.gguf")     # -> Path
    gguf_manifest(reg, manifest, "q4_K_M")                     # create --quantize

Every path starts from a float Hugging Face folder (``float_folder``): a registry HF model's own
snapshot, a GGUF model's cached conversion (``models.loader``), or a packed model dequantized.
Starting from weights that were already quantized works, but compounds the error (llama-quantize
refuses it without --allow-requantize); a warning says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import OficinaError
from ..formats.gguf_export import export_gguf
from ..formats.gguf_export import file_type as get_type
from ..generation.session import Model
from ..models.info import describe
from ..models.loader import load_folder, load_tokenizer, no_tqdm
from ..models.quant_linear import dequantize_model
from ..models.torch_quant import KEY, QuantResult, TorchQuantConfig, is_packed, load_packed, quantize, save
from ..options import Options
from ..registry.manifest import Manifest
from ..registry.names import parse_ref
from ..registry.registry import Entry, Registry
from ..registry.sources import resolve
from ..report import reporter

__all__ = ["export_entry", "float_folder", "gguf_manifest", "quantize_entry", "default_name"]

_FLOAT_FILE_TYPES = ("F32", "F16", "BF16", "ALL_F32")


def float_folder(reg: Registry, manifest: Manifest, workdir: Path) -> Path:
    """A Hugging Face folder with float weights for ``manifest`` (written under ``workdir`` when
    one has to be made)."""
    snap = reg.snapshot_for(manifest)
    if manifest.format == "gguf":
        info = describe(snap, "gguf")
        if info.file_type not in _FLOAT_FILE_TYPES:
            reporter().warn(f"the source weights are already quantized ({info.file_type}): "
                            f"quantizing them again adds to that error")
        return load_folder(snap, "gguf", info=info, cache=reg.home / "cache").folder
    if is_packed(snap):
        return _unpack(snap, workdir / "unpacked")
    return snap


def _unpack(snap: Path, out: Path) -> Path:
    model = load_packed(snap)
    reporter().warn(f"the source weights are already quantized ({model.config.oficina_quantization['to']}): "
                    f"quantizing them again adds to that error")
    dequantize_model(model)
    model.float()
    delattr(model.config, KEY)
    model.config.dtype = "float32"

    with no_tqdm():
        model.save_pretrained(out)
    load_tokenizer(snap).save_pretrained(out)
    return out


def default_name(source: str, suffix: str) -> str:
    """"smollm2" -> "smollm2:int4"; "smollm2:tuned" -> "smollm2:tuned-int4"."""
    ref = parse_ref(source)
    base, _, tag = ref.name.partition(":")
    return f"{base}:{suffix.lower()}" if tag == "latest" else f"{base}:{tag}-{suffix.lower()}"


def quantize_entry(reg: Registry, name: str, cfg: TorchQuantConfig, out: str | None = None) -> tuple[Entry, QuantResult]:
    """Quantize registry model ``name`` in PyTorch and register the packed result (lineage:
    parent = the source version, producer = what was done)."""
    entry = resolve(name, reg)
    target = out or default_name(entry.name, cfg.to)
    with tempfile.TemporaryDirectory(dir=_tmp(reg)) as tmp:
        folder = float_folder(reg, entry.manifest, Path(tmp))
        model = Model(load_folder(folder, "hf"), entry, Options())
        if model.info.kind != "decoder-only" and cfg.to in ("int8", "int4"):
            reporter().note(f"{model.info.architecture} is {model.info.kind}: its linear layers are quantized the same way")
        result = quantize(model.torch_model, cfg)
        packed = Path(tmp) / "packed"
        save(model.torch_model, model.tokenizer, packed, result)
        new = reg.publish(target, packed, parent=entry.ref, inherit=entry.manifest,
                          producer={"op": "quantize", "source": entry.ref, "to": cfg.to,
                                    "group_size": result.group_size, "modules": len(result.modules)})
    return new, result


def export_entry(reg: Registry, name: str, file_type: str, out_path: str | Path) -> Path:
    """Write registry model ``name`` as a GGUF file of ``file_type`` ("Q4_K_M", "f16", ...)."""
    entry = resolve(name, reg)
    if entry.manifest.adapters:
        reporter().warn("the model's ADAPTER layers are not part of the GGUF file; merge them into "
                        "the weights first to include them")
    with tempfile.TemporaryDirectory(dir=_tmp(reg)) as tmp:
        return _export(float_folder(reg, entry.manifest, Path(tmp)), Path(out_path), file_type)


def gguf_manifest(reg: Registry, manifest: Manifest, file_type: str) -> Manifest:
    """``manifest`` with its weights replaced by one GGUF file of ``file_type`` (Ollama's
    ``create --quantize``): PARAMETER/TEMPLATE/SYSTEM/... stay as they are."""
    with tempfile.TemporaryDirectory(dir=_tmp(reg)) as tmp:
        out = _export(float_folder(reg, manifest, Path(tmp)), Path(tmp) / "model.gguf", file_type)
        return reg.manifest_for(out, inherit=manifest, keep_adapters=True)


def _export(folder: Path, out: Path, file_type: str) -> Path:
    ft = get_type(file_type)
    if out.suffix.lower() != ".gguf":
        raise OficinaError(f"{out}: the output file should end in .gguf")
    if not out.parent.is_dir():
        raise OficinaError(f"{out.parent}: no such folder")
    with reporter().progress(f"exporting {ft.name}", None) as bar:
        return export_gguf(folder, out, dtype=ft.name,
                           progress=lambda done, total: bar.update(completed=done, total=total))


def _tmp(reg: Registry) -> Path:
    """Scratch space on the registry's own disk (the files end up there anyway)."""
    path = reg.home / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path
