"""The local registry: names -> versions -> manifests -> blobs.

Layout of ``$OFICINA_HOME`` (default ``~/.oficina``)::

    blobs/sha256-<hex>        content-addressed files (weights, tokenizers, manifests)
    registry.db               SQLite: every version of every name, its parent and producer
    snapshots/<hex>/          a model folder materialised from a manifest (links to blobs)

A version is written in this order: blobs, then the manifest blob, then one SQLite transaction.
A crash before the commit leaves only unreferenced blobs (collected later), never a name that
points at something missing.

Writers and the collector share ``$OFICINA_HOME/lock`` (flock(2), released by the kernel when a
process dies, even by kill -9): a registry holds it shared from its first blob write until the
version that uses the blobs is committed (``add``), and ``gc`` takes it exclusively, so it never
deletes a blob that a running pull or create has stored but not yet committed. Whoever gets it
exclusively also sweeps what killed writers left (``blobs/.partial-*``, ``tmp/*``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelNotFound, RegistryError
from ..report import reporter
from .db import PerThread
from .manifest import Manifest
from .names import Ref, parse_ref
from .store import BlobStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    manifest  TEXT NOT NULL,
    parent    TEXT,
    created   REAL NOT NULL,
    producer  TEXT NOT NULL DEFAULT '{}',
    metrics   TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS heads (
    name     TEXT PRIMARY KEY,
    version  INTEGER NOT NULL
);
"""


STALE_TMP_S = 3600  # a tmp/ entry untouched this long belongs to a command that died


def default_home() -> Path:
    return Path(os.environ.get("OFICINA_HOME") or Path.home() / ".oficina").expanduser()


@dataclass
class Entry:
    """One version of one name."""

    name: str
    version: int
    digest: str  # the manifest's digest
    manifest: Manifest
    parent: str | None
    created: float
    producer: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Registry:
    def __init__(self, home: Path | str | None = None):
        self.home = Path(home) if home else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.home, on_write=self._lease)
        self._db = PerThread(self.home / "registry.db", SCHEMA)  # threads (a server's) share a Registry
        self._lock_fd: int | None = None  # held shared while this registry has uncommitted blobs
        self._writing = 0  # depth of writing() blocks

    # -- the writers' lock --------------------------------------------------------------------
    def _open_lock(self) -> int:
        return os.open(self.home / "lock", os.O_RDWR | os.O_CREAT, 0o644)

    def _lease(self) -> None:
        """Hold the lock shared (once). When nobody else holds it, every partial file is stale:
        sweep them first."""
        if self._lock_fd is not None:
            return
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            self._sweep()
        fcntl.flock(fd, fcntl.LOCK_SH)  # blocks only while a gc holds it exclusively
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None and not self._writing:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def writing(self):
        """Hold the writers' lock for a whole command (a pull of several files, a create), and
        let it go on the way out, committed or not."""
        self._lease()
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
            self._release()

    def _sweep(self) -> int:
        """Remove what killed writers left; call only with the lock held exclusively. Partial
        blobs are only ever written under the lock, so now every one is stale. ``tmp/`` and
        half-built snapshots are also used by commands before they take the lock (quantize's
        work folder, a reader's snapshot), so only those untouched for a while go."""
        freed = self.blobs.clean_partials()
        now = time.time()
        for d, idle in ((self.home / "tmp", STALE_TMP_S), (self.home / "snapshots", 600)):
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if (d.name == "tmp" or p.name.startswith(".tmp-")) and _last_touched(p) < now - idle:
                    freed += _size(p)
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
        return freed

    # -- reading ------------------------------------------------------------------------------
    def _entry(self, row: tuple) -> Entry:
        name, version, digest, parent, created, producer, metrics = row
        manifest = Manifest.from_json(self.blobs.read_bytes(digest))
        return Entry(name, version, digest, manifest, parent, created,
                     json.loads(producer), json.loads(metrics))

    def _rows(self, sql: str, *args: Any) -> list[tuple]:
        return self._db.execute(sql, args).fetchall()

    def find(self, ref: str | Ref) -> Entry | None:
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        version = ref.version
        if version is None:
            row = self._rows("SELECT version FROM heads WHERE name=?", ref.name)
            if not row:
                return None
            version = row[0][0]
        rows = self._rows("SELECT name, version, manifest, parent, created, producer, metrics "
                          "FROM versions WHERE name=? AND version=?", ref.name, version)
        return self._entry(rows[0]) if rows else None

    def get(self, ref: str | Ref) -> Entry:
        entry = self.find(ref)
        if entry is None:
            raise ModelNotFound(f"model {str(ref)!r} not found; `oficina list` shows what is here, "
                                f"`oficina pull NAME` fetches one")
        return entry

    def list(self) -> list[Entry]:
        rows = self._rows("SELECT v.name, v.version, v.manifest, v.parent, v.created, v.producer, "
                          "v.metrics FROM heads h JOIN versions v ON v.name=h.name AND "
                          "v.version=h.version ORDER BY v.name")
        return [self._entry(r) for r in rows]

    def history(self, name: str) -> tuple[list[Entry], int]:
        """All versions of a name (oldest first) and the current one."""
        ref = parse_ref(name)
        head = self._rows("SELECT version FROM heads WHERE name=?", ref.name)
        if not head:
            raise ModelNotFound(f"model {name!r} not found")
        rows = self._rows("SELECT name, version, manifest, parent, created, producer, metrics "
                          "FROM versions WHERE name=? ORDER BY version", ref.name)
        return [self._entry(r) for r in rows], head[0][0]

    # -- writing ------------------------------------------------------------------------------
    def add(self, name: str, manifest: Manifest, parent: str | None = None,
            producer: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> Entry:
        """Register ``manifest`` (whose blobs must already be stored) as a new version of name."""
        ref = parse_ref(name)
        if ref.version is not None:
            raise RegistryError("cannot create a specific version; give the name without @N")
        # the check and the commit happen under the writers' lock, which gc cannot take
        with self.writing():
            digest = self.blobs.put_bytes(manifest.to_json())
            missing = [d for d in manifest.digests() if not self.blobs.has(d)]
            if missing:
                raise RegistryError(f"manifest references missing blobs: {', '.join(missing)}")
            with self._tx():
                (last,) = self._db.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE name=?",
                                           (ref.name,)).fetchone()
                version = last + 1
                self._db.execute("INSERT INTO versions VALUES (?,?,?,?,?,?,?)",
                                 (ref.name, version, digest, parent, time.time(),
                                  json.dumps(producer or {}), json.dumps(metrics or {})))
                self._db.execute("INSERT OR REPLACE INTO heads VALUES (?,?)", (ref.name, version))
        self._release()  # the blobs this registry stored are referenced now
        return self.get(Ref(ref.name, version))

    def publish(self, name: str, source: Path | list, *, fmt: str | None = None, parent: str | None = None,
                producer: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                inherit: Manifest | None = None, details: dict[str, Any] | None = None,
                keep_adapters: bool = False, adapter_of: Manifest | None = None, **fields: Any) -> Entry:
        """Publish a new version of ``name`` made of ``source`` (a folder or file to store, or
        stored ``FileRef``s with ``fmt``): its manifest inherits ``inherit``'s Modelfile fields,
        is described from the files (plus ``details``) and added with its lineage; ``fields``:
        ``license``, ``license_from_file``. With ``adapter_of``, ``source`` is an adapter folder
        stored as the next adapter layer of that manifest instead (``fields``: ``keep``, which
        of its file names belong to the adapter). The one way every producer makes a version
        (``publish.py``); ``add`` only records a manifest made elsewhere."""
        # publish.py needs sources.py and models/, which import this module: imported late
        from .publish import stacked_manifest

        if adapter_of is not None:
            manifest = stacked_manifest(self, adapter_of, Path(source), fields["keep"], details or {})
        else:
            manifest = self.manifest_for(source, fmt=fmt, inherit=inherit, details=details,
                                         keep_adapters=keep_adapters, **fields)
        return self.add(name, manifest, parent=parent, producer=producer, metrics=metrics)

    def manifest_for(self, source: Path | list, **kwargs) -> Manifest:
        """``publish``'s manifest without adding a version (a base to layer on, create's FROM)."""
        # publish.py needs sources.py and models/, which import this module: imported late
        from .publish import stored_manifest

        return stored_manifest(self, source, **kwargs)

    def set_metrics(self, entry: Entry, metrics: dict[str, Any]) -> None:
        merged = {**entry.metrics, **metrics}
        with self._tx():
            self._db.execute("UPDATE versions SET metrics=? WHERE name=? AND version=?",
                             (json.dumps(merged), entry.name, entry.version))

    def copy(self, src: str, dst: str) -> Entry:
        s = self.get(src)
        return self.add(dst, s.manifest, parent=s.ref, producer={"op": "cp", "from": s.ref})

    def rollback(self, name: str, to: int | None = None) -> Entry:
        versions, head = self.history(name)
        numbers = [e.version for e in versions]
        target = to if to is not None else max((v for v in numbers if v < head), default=None)
        if target is None:
            raise RegistryError(f"{versions[0].name} is at its first version; nothing to roll back to")
        if target not in numbers:
            raise RegistryError(f"{versions[0].name} has no version {target}; versions: "
                                f"{', '.join(map(str, numbers))}")
        with self._tx():
            self._db.execute("UPDATE heads SET version=? WHERE name=?", (target, versions[0].name))
        return self.get(Ref(versions[0].name, target))

    def remove(self, name: str) -> int:
        """Delete a name with all its versions; return the bytes freed by unreferenced blobs."""
        ref = parse_ref(name)
        if not self._rows("SELECT 1 FROM heads WHERE name=?", ref.name):
            raise ModelNotFound(f"model {name!r} not found")
        with self._tx():
            self._db.execute("DELETE FROM versions WHERE name=?", (ref.name,))
            self._db.execute("DELETE FROM heads WHERE name=?", (ref.name,))
        return self.gc()

    def gc(self) -> int:
        """Delete blobs and snapshots no version references, and what killed writers left;
        return the bytes freed. While a writer (pull, create, tune...) runs, in this process or
        another, its blobs are not referenced yet: then nothing is collected now (the next gc,
        or the next writer, does it)."""
        if self._lock_fd is not None:
            return 0
        fd = self._open_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                reporter().note("another oficina command is writing to the registry; unused files "
                                "are reclaimed the next time")
                return 0
            referenced: set[str] = set()
            for (digest,) in self._rows("SELECT DISTINCT manifest FROM versions"):
                referenced.add(digest)
                referenced |= Manifest.from_json(self.blobs.read_bytes(digest)).digests()
            freed = self.blobs.remove_unreferenced(referenced) + self._sweep()
            snaps = self.home / "snapshots"
            if snaps.is_dir():
                for d in snaps.iterdir():
                    if "sha256:" + d.name not in referenced:
                        shutil.rmtree(d, ignore_errors=True)
            return freed
        finally:
            os.close(fd)

    def _tx(self):
        return self._db.transaction()

    def close(self) -> None:
        """Close the database connections (every thread's); the registry reopens on next use."""
        self._db.close()

    # -- materialising ------------------------------------------------------------------------
    def snapshot(self, entry: Entry) -> Path:
        return self.snapshot_for(entry.manifest)

    def snapshot_for(self, manifest: Manifest) -> Path:
        """A folder with the model's files under their names (symlinks into blobs), which
        libraries that want a directory (transformers) can open. Built atomically."""
        root = self.home / "snapshots"
        final = root / hashlib.sha256(manifest.to_json()).hexdigest()
        if final.is_dir():
            return final
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            for f in manifest.files:
                dest = tmp / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(self.blobs.path(f.digest), dest)
            for f in manifest.adapters:
                dest = tmp / "adapters" / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(self.blobs.path(f.digest), dest)
            os.replace(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not final.is_dir():
                raise
        return final


def _last_touched(p: Path) -> float:
    """The newest mtime of ``p`` and everything under it (a live command keeps writing there)."""
    try:
        times = [p.lstat().st_mtime]
        if p.is_dir() and not p.is_symlink():
            times += [f.lstat().st_mtime for f in p.rglob("*")]
        return max(times)
    except OSError:
        return time.time()


def _size(p: Path) -> int:
    try:
        if p.is_dir() and not p.is_symlink():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        return p.lstat().st_size
    except OSError:
        return 0
