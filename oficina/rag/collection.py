"""Collections: a named document base in the registry, versioned like a model.

A collection ``NAME`` is the registry name ``rag/NAME``. Each version's manifest (format
``rag``) holds two blobs, the SQLite store (``store.py``) and the FAISS index built from the
store's vectors (``index.py``), and its parameters: the embedding model's ref and digest (the
lineage), chunk size and overlap, index kind. History, rollback, ``rm`` and garbage collection
are the registry's own.

Ingest works on a private copy of the current store under ``$OFICINA_HOME/rag/tmp`` and
publishes by adding a registry version, one SQLite transaction that points the name at both new
blobs at once: a killed ingest leaves the previous version current (index and store from the
same manifest, so they always agree) and only unreferenced temp files, which the next ingest
deletes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OficinaError
from ..formats.documents import MAX_BYTES, READERS, DocumentError, read_document
from ..registry.manifest import FileRef, Manifest
from ..registry.names import Ref, parse_ref
from ..registry.registry import Entry, Registry
from ..report import reporter
from . import guard, index, store
from .chunk import chunk_document
from .embed import Encoder, load_encoder

PREFIX = "rag/"
FORMAT = "rag"


@dataclass
class CollectionConfig:
    embed: str = "minilm"  # registry encoder, pinned to name@version at create
    chunk_tokens: int = 200
    overlap: int = 40
    index: str = "auto"  # auto | flat | hnsw | ivf
    embed_digest: str | None = None
    dim: int | None = None
    window: int | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CollectionConfig:
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def registry_name(name: str) -> str:
    """``docs`` -> ``rag/docs:latest`` (collections share the registry, not the model names)."""
    base = name[len(PREFIX):] if name.lower().startswith(PREFIX) else name
    if "/" in base or "@" in base:
        raise OficinaError(f"invalid collection name {name!r}: use letters, digits, '.', '_', '-'")
    return parse_ref(PREFIX + base).name


def display(reg_name: str) -> str:
    n = reg_name[len(PREFIX):]
    return n.removesuffix(":latest")


def find(name: str, registry: Registry, version: int | None = None) -> Entry:
    entry = registry.find(Ref(registry_name(name), version))
    if entry is None or entry.manifest.format != FORMAT:
        what = f"version {version} of collection" if version else "collection"
        raise OficinaError(f"{what} {name!r} not found; `oficina rag list` shows the collections, "
                           f"`oficina rag create NAME` makes one")
    return entry


def list_collections(registry: Registry) -> list[Entry]:
    return [e for e in registry.list() if e.manifest.format == FORMAT and e.name.startswith(PREFIX)]


# -- publishing a version -----------------------------------------------------------------------

def _work_dir(registry: Registry) -> Path:
    root = registry.home / "rag" / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    for d in root.iterdir():  # left by a killed ingest: its owner is gone
        pid = d.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(registry: Registry, name: str, work: Path, db: sqlite3.Connection,
             cfg: CollectionConfig, parent: str | None, producer: dict) -> Entry:
    ids, vecs = store.vectors(db, cfg.dim)
    idx = index.build(cfg.index, cfg.dim, ids, vecs)
    docs = db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
    flagged = db.execute("SELECT COUNT(*) FROM chunks WHERE flags != ''").fetchone()[0]
    db.close()
    index.save(idx, work / "index.faiss")
    files = []
    for fname in ("store.sqlite", "index.faiss"):
        digest, size = registry.blobs.put_file(work / fname)
        files.append(FileRef(fname, digest, size))
    details = {"documents": docs, "chunks": len(ids), "index": index.kind_of(idx),
               "flagged": flagged, "embed": cfg.embed}
    manifest = Manifest(FORMAT, files, params=asdict(cfg), details=details)
    return registry.add(name, manifest, parent=parent, producer=producer)


def create(name: str, cfg: CollectionConfig, registry: Registry | None = None,
           encoder: Encoder | None = None) -> Entry:
    reg = registry or Registry()
    rname = registry_name(name)
    if reg.find(rname) is not None:
        raise OficinaError(f"collection {name!r} exists; `oficina rag ingest {name} PATH` adds to "
                           f"it, `oficina rag rm {name}` deletes it")
    enc = encoder or load_encoder(cfg.embed, reg)
    if cfg.chunk_tokens > enc.info.window - 2:
        raise OficinaError(f"--chunk-tokens {cfg.chunk_tokens} is over {enc.info.name}'s window of "
                           f"{enc.info.window} tokens (less 2 for [CLS]/[SEP])")
    if not 0 <= cfg.overlap <= cfg.chunk_tokens // 2:
        raise OficinaError(f"--overlap {cfg.overlap} must be between 0 and half the chunk size")
    index.choose(cfg.index, 0)
    cfg = CollectionConfig(enc.info.name, cfg.chunk_tokens, cfg.overlap, cfg.index,
                           enc.info.digest, enc.info.dim, enc.info.window)
    work = _work_dir(reg)
    try:
        db = store.open_rw(work / "store.sqlite")
        db.execute("INSERT INTO meta VALUES ('config', ?)", (json.dumps(asdict(cfg)),))
        return _publish(reg, rname, work, db, cfg, parent=cfg.embed,
                        producer={"op": "rag create", "embed": cfg.embed,
                                  "embed_digest": cfg.embed_digest})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove(name: str, registry: Registry | None = None) -> int:
    reg = registry or Registry()
    find(name, reg)
    return reg.remove(registry_name(name))


def rollback(name: str, to: int | None, registry: Registry | None = None) -> Entry:
    reg = registry or Registry()
    find(name, reg)
    return reg.rollback(registry_name(name), to)


def history(name: str, registry: Registry | None = None) -> tuple[list[Entry], int]:
    reg = registry or Registry()
    find(name, reg)
    return reg.history(registry_name(name))


# -- ingest -------------------------------------------------------------------------------------

@dataclass
class IngestReport:
    version: int | None  # the new version; None when nothing changed
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    unsupported: Counter = field(default_factory=Counter)  # suffix -> files
    chunks: int = 0  # new chunks embedded
    flagged: list[tuple[str, int, list[str]]] = field(default_factory=list)  # (source, ord, reasons)
    seconds: dict[str, float] = field(default_factory=dict)


def walk(paths: list[str | Path], report: IngestReport) -> list[Path]:
    """Files under ``paths`` with a known suffix, each once; loops and unreadable entries are
    recorded in ``report.skipped``, unknown suffixes counted in ``report.unsupported``."""
    out: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def visit_file(p: Path) -> None:
        try:
            st = p.stat()
        except OSError as e:
            report.skipped.append((str(p), "symlink loop" if e.errno == 40 else
                                   f"cannot read ({e.strerror})"))
            return
        if not p.is_file():
            report.skipped.append((str(p), "not a regular file"))
            return
        if p.suffix.lower() not in READERS:
            report.unsupported[p.suffix.lower() or "(none)"] += 1
            return
        if (st.st_dev, st.st_ino) in seen_files:
            return
        seen_files.add((st.st_dev, st.st_ino))
        out.append(p)

    for root in map(Path, paths):
        if not os.path.lexists(root):
            raise OficinaError(f"no such file or folder: {root}")
        try:
            is_dir = root.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            visit_file(root)
            continue
        for d, dirs, files in os.walk(root, followlinks=True,
                                      onerror=lambda e: report.skipped.append(
                                          (e.filename, f"cannot list ({e.strerror})"))):
            try:
                st = os.stat(d)
            except OSError as e:
                report.skipped.append((d, "symlink loop" if e.errno == 40 else f"cannot read ({e.strerror})"))
                dirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:
                report.skipped.append((d, "symlink loop (folder already visited)"))
                dirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirs.sort()
            for f in sorted(files):
                visit_file(Path(d) / f)
    return out


def ingest(name: str, paths: list[str | Path], prune: bool = False, max_bytes: int = MAX_BYTES,
           registry: Registry | None = None, encoder: Encoder | None = None,
           tags: list[str] | None = None) -> IngestReport:
    """Add, replace (changed digest) and with ``prune`` remove documents; publish a new version
    when anything changed."""
    reg = registry or Registry()
    head = find(name, reg)
    cfg = CollectionConfig.from_params(head.manifest.params)
    rep = IngestReport(None)
    t0 = time.perf_counter()
    files = walk(paths, rep)
    work = _work_dir(reg)
    try:
        src = reg.snapshot(head) / "store.sqlite"
        shutil.copyfile(src, work / "store.sqlite")
        db = store.open_rw(work / "store.sqlite")
        db.execute("BEGIN")
        known = {s: (i, d) for i, s, d in db.execute("SELECT id, source, digest FROM documents")}
        pending: list[tuple[dict, list]] = []  # (document row, chunks)
        seen: set[str] = set()
        tokenizer = None
        with reporter().progress("reading", total=len(files)) as bar:
            for path in files:
                bar.advance()
                try:
                    data = _read_limited(path, max_bytes)
                    digest = "sha256:" + hashlib.sha256(data).hexdigest()
                    base = str(path.absolute())
                    # a .jsonl file's records are sources "file#line"; its digest covers them all
                    olds = [s for s in known if s == base or s.startswith(base + "#")]
                    seen.update(olds)
                    if olds and all(known[s][1] == digest for s in olds):
                        rep.unchanged += 1
                        continue
                    docs = read_document(path.absolute(), data, max_bytes)
                except DocumentError as e:
                    rep.skipped.append((str(path), str(e)))
                    continue
                if tokenizer is None:
                    encoder = encoder or load_encoder(cfg.embed, reg)
                    _check_encoder(encoder, cfg)
                    tokenizer = encoder.tokenizer
                for s in olds:
                    db.execute("DELETE FROM documents WHERE id=?", (known[s][0],))
                (rep.updated if olds else rep.added).append(str(path))
                for doc in docs:
                    seen.add(doc.source)
                    chunks = chunk_document(doc, tokenizer, cfg.chunk_tokens, cfg.overlap)
                    meta = dict(doc.metadata)
                    if tags:
                        meta["tags"] = sorted(set(meta.get("tags", [])) | set(tags)) \
                            if isinstance(meta.get("tags", []), list) else list(tags)
                    pending.append(({"source": doc.source, "digest": digest, "kind": doc.kind,
                                     "title": doc.title, "size": len(data), "metadata": meta}, chunks))
        if prune:
            _prune(db, known, seen, paths, rep)
        rep.seconds["read"] = time.perf_counter() - t0
        texts = [c.text for _, chunks in pending for c in chunks]
        t1 = time.perf_counter()
        vecs = np.zeros((0, cfg.dim or 0), dtype=np.float32)
        if texts:
            with reporter().progress("embedding", total=len(texts)) as bar:
                vecs = encoder.encode(texts, progress=bar.advance)
        rep.seconds["embed"] = time.perf_counter() - t1
        rep.chunks = len(texts)
        _insert(db, pending, vecs, rep)
        db.execute("COMMIT")
        if not (rep.added or rep.updated or rep.removed):
            db.close()
            return rep
        t2 = time.perf_counter()
        entry = _publish(reg, head.name, work, db, cfg, parent=head.ref,
                         producer={"op": "rag ingest", "embed": cfg.embed,
                                   "embed_digest": cfg.embed_digest, "added": len(rep.added),
                                   "updated": len(rep.updated), "removed": len(rep.removed)})
        rep.seconds["index"] = time.perf_counter() - t2
        rep.version = entry.version
        return rep
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prune(db, known: dict, seen: set[str], paths: list, rep: IngestReport) -> None:
    """Remove the documents under the ingested paths whose files are gone."""
    roots = [str(Path(p).absolute()) for p in paths]
    for s, (i, _) in known.items():
        f = s.split("#", 1)[0]
        gone = not os.path.exists(f) or any(f == r or f.startswith(r.rstrip("/") + "/")
                                           for r in roots)
        if s not in seen and gone:
            db.execute("DELETE FROM documents WHERE id=?", (i,))
            rep.removed.append(s)


def _insert(db, pending: list, vecs, rep: IngestReport) -> None:
    """The new documents and their chunks (text, span, flags, vector) into the store."""
    row = 0
    for doc, chunks in pending:
        cur = db.execute("INSERT INTO documents (source, digest, kind, title, size, metadata, "
                         "ingested) VALUES (?,?,?,?,?,?,?)",
                         (doc["source"], doc["digest"], doc["kind"], doc["title"], doc["size"],
                          json.dumps(doc["metadata"]), time.time()))
        for n, c in enumerate(chunks):
            why = guard.flags(c.text)
            if why:
                rep.flagged.append((doc["source"], n, why))
            db.execute("INSERT INTO chunks (doc, ord, text, page, section, start, end, tokens, "
                       "flags, vector) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (cur.lastrowid, n, c.text, c.page, c.section, c.start, c.end, c.tokens,
                        ",".join(why), vecs[row].tobytes()))
            row += 1


def _read_limited(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentError(f"{size / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit "
                                f"per file (--max-file-mb)")
        return path.read_bytes()
    except OSError as e:
        raise DocumentError(f"cannot read ({e.strerror})") from None


def _check_encoder(encoder: Encoder, cfg: CollectionConfig) -> None:
    if cfg.embed_digest and encoder.info.digest and encoder.info.digest != cfg.embed_digest:
        raise OficinaError(f"the collection was embedded with {cfg.embed} "
                           f"({cfg.embed_digest[7:19]}), which is no longer that model "
                           f"({encoder.info.digest[7:19]}); make a new collection")


def reindex(name: str, kind: str, registry: Registry | None = None) -> Entry:
    """Rebuild the index as another kind from the stored vectors (no re-embedding)."""
    reg = registry or Registry()
    head = find(name, reg)
    cfg = CollectionConfig.from_params(head.manifest.params)
    index.choose(kind, 0)
    cfg.index = kind
    work = _work_dir(reg)
    try:
        shutil.copyfile(reg.snapshot(head) / "store.sqlite", work / "store.sqlite")
        db = store.open_rw(work / "store.sqlite")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('config', ?)", (json.dumps(asdict(cfg)),))
        return _publish(reg, head.name, work, db, cfg, parent=head.ref,
                        producer={"op": "rag reindex", "index": kind, "embed": cfg.embed,
                                  "embed_digest": cfg.embed_digest})
    finally:
        shutil.rmtree(work, ignore_errors=True)
