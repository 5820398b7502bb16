"""``oficina create NAME -f Modelfile`` and its inverse, ``show --modelfile``.

A created model is a new manifest: the base's files (by digest, nothing copied twice), with
PARAMETER/TEMPLATE/SYSTEM/MESSAGE/LICENSE/ADAPTER from the Modelfile layered on top.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .errors import FormatError, InvalidOptions, ModelfileError, OficinaError
from .formats.template import compile_template, go_to_jinja, is_go_template
from .modelfile import Modelfile, parse_file
from .models.info import describe
from .options import Options, validate_mapping
from .registry.manifest import FileRef, Manifest
from .registry.registry import Entry, Registry
from .registry.sources import inside, is_remote, remote_manifest, resolve, store_files
from .safety.guard import parse_spec

ROLES = ("system", "user", "assistant")


def _looks_like_path(value: str, base_dir: Path) -> bool:
    return (value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf")
            or (base_dir / value).exists())


def _base(reg: Registry, source: str, base_dir: Path) -> tuple[Manifest, str | None]:
    if is_remote(source):  # FROM openai://host:port/model: answers come from that upstream
        return remote_manifest(source), None
    if _looks_like_path(source, base_dir):
        path = (base_dir / Path(source).expanduser()).resolve()
        if not path.exists():
            raise OficinaError(f"FROM {source}: no such file or folder")
        return reg.manifest_for(path), None

    entry = resolve(source, reg)
    return replace(entry.manifest, params=dict(entry.manifest.params),
                   adapters=list(entry.manifest.adapters)), entry.ref


_ADAPTER_KINDS = "a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or a .gguf LoRA"


def _adapter_files(reg: Registry, source: str, base_dir: Path, index: int, base_info) -> list[FileRef]:
    """The files of one ADAPTER, checked now (a bad adapter would otherwise be accepted here and
    crash ``run``): its kind, its links, its weights and their shapes against the base."""
    # here, not at the top: loads torch, and the CLI imports create.py at start-up
    from .tuning.attach import check_adapter

    given = base_dir / Path(source).expanduser()
    path = given.resolve()
    if path.is_file() and path.suffix == ".gguf":
        # here, not at the top: loads numpy (gguf), and the CLI imports create.py at start-up
        from .formats.gguf import read_header

        read_header(path)
        files = [(f"{index}/adapter.gguf", path)]
    elif path.is_dir():
        weights = sorted(path.glob("adapter_model*.safetensors"))
        if not (path / "adapter_config.json").is_file() or not weights:
            raise FormatError(f"{source} is not an adapter: expected {_ADAPTER_KINDS}")
        inside(path, [(n, path / n) for n in ("adapter_config.json", *(w.name for w in weights))])
        check_adapter(path, base_info, source)
        files = [(f"{index}/adapter_config.json", path / "adapter_config.json")] + \
                [(f"{index}/{w.name}", w) for w in weights]
    elif path.exists():
        raise FormatError(f"{source} is not an adapter: it is a {'file' if path.is_file() else 'special file'}, "
                          f"expected {_ADAPTER_KINDS}")
    else:
        raise OficinaError(f"{source}: no such file or folder")
    return store_files(reg, files)


def _at(mf: Modelfile, cmd: str, index: int, error: OficinaError) -> ModelfileError:
    """``error`` (found after parsing) as a ModelfileError naming the instruction's line."""
    if isinstance(error, ModelfileError):
        return error
    message = str(error)
    return ModelfileError(mf.line_of(cmd, index), message if message.startswith(cmd) else f"{cmd}: {message}")


def _check_template(template: str) -> None:
    """A TEMPLATE must translate (Go) and compile (Jinja) now, not fail at run time."""
    jinja = go_to_jinja(template) if is_go_template(template) else template
    compile_template(jinja)


def create(reg: Registry, name: str, modelfile: Path, quantize: str | None = None) -> Entry:
    """Register the model ``modelfile`` describes; ``quantize`` (a GGUF type such as "q4_K_M")
    stores its weights as one GGUF file of that type, as ``ollama create --quantize`` does."""
    mf = parse_file(modelfile)
    if not mf.from_:
        raise ModelfileError(1, "no FROM line")
    # what can be checked without the base: before anything is written
    for i, pair in enumerate(mf.parameters):
        try:
            Options.from_pairs([pair])
        except InvalidOptions as e:
            raise _at(mf, "PARAMETER", i, e) from None
    if mf.template is not None:
        try:
            _check_template(mf.template)
        except FormatError as e:
            raise _at(mf, "TEMPLATE", -1, e) from None
    with reg.writing():
        return _create(reg, name, mf, Path(modelfile), quantize)


def _create(reg: Registry, name: str, mf: Modelfile, modelfile: Path, quantize: str | None) -> Entry:
    base_dir = Path(modelfile).resolve().parent
    manifest, parent = _base(reg, mf.from_, base_dir)

    if mf.parameters:
        new = Options.from_pairs(mf.parameters).to_dict()
        given = {k for k, _ in mf.parameters}
        try:
            manifest.params = validate_mapping({**manifest.params, **{k: new[k] for k in given}})
        except InvalidOptions as e:
            raise _at(mf, "PARAMETER", -1, e) from None
        if manifest.params.get("guard"):  # an unknown guard fails now, not at the first request

            for spec in manifest.params["guard"]:
                parse_spec(spec)
        if manifest.params.get("rag"):  # the collection must exist, and be one (oficina/rag)
            from .rag.bound import check_ref

            try:
                check_ref(reg, manifest.params["rag"])
            except OficinaError as e:
                raise _at(mf, "PARAMETER", -1, e) from None
    if mf.template is not None:
        manifest.template = mf.template
    if mf.system is not None:
        manifest.system = mf.system
    if mf.messages:
        manifest.messages = [{"role": r, "content": c} for r, c in mf.messages]
    if mf.license:
        manifest.license = list(mf.license)
    if mf.adapters:
        base_info = describe(reg.snapshot_for(manifest), manifest.format)
        manifest.adapters = []
        for i, a in enumerate(mf.adapters):
            try:
                manifest.adapters += _adapter_files(reg, a, base_dir, i, base_info)
            except OficinaError as e:
                raise _at(mf, "ADAPTER", i, e) from None
    producer = {"op": "create", "source": mf.from_, "modelfile": Path(modelfile).read_text(errors="replace")}
    if quantize:
        # here, not at the top: loads torch, and the CLI imports create.py at start-up
        from .quant.convert import gguf_manifest

        manifest = gguf_manifest(reg, manifest, quantize)
        producer["quantize"] = quantize
    return reg.add(name, manifest, parent=parent, producer=producer)


def to_modelfile(entry: Entry, reg: Registry) -> str:
    """A Modelfile that re-creates ``entry`` (FROM its own registry version)."""
    m = entry.manifest
    adapters = sorted({f.path.split("/", 1)[0] for f in m.adapters})
    mf = Modelfile(
        from_=f"{entry.name}@{entry.version}",
        parameters=_param_pairs(m.params),
        template=m.template, system=m.system,
        adapters=[f"{reg.snapshot(entry)}/adapters/{a}" for a in adapters],
        messages=[(x["role"], x["content"]) for x in m.messages],
        license=list(m.license),
    )
    header = (f"# Modelfile generated by \"oficina show --modelfile\"\n"
              f"# To build a new Modelfile based on this one, replace the FROM line with:\n"
              f"# FROM {entry.name}\n\n")
    return header + mf.to_text()


def _param_pairs(params: dict) -> list[tuple[str, str]]:
    full = Options.from_mapping(params)
    return [(k, v) for k, v in full.to_pairs(changed_only=False) if k in params]
