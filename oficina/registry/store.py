"""Content-addressed blob store under ``$OFICINA_HOME/blobs``.

A blob is named by the sha256 of its bytes (``sha256-<hex>``, Ollama's layout). Writes go to a
temp file in the same directory, are fsynced, then renamed into place, so an interrupted pull or
create never leaves a half-written blob under a real name. Digests from outside are validated
before they become paths.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from ..errors import RegistryError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise RegistryError(f"invalid digest {digest!r} (expected sha256:<64 hex>)")
    return digest


class BlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / "blobs"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / check_digest(digest).replace(":", "-")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_stream(self, chunks: Iterable[bytes], expect: str | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        """Store the concatenation of ``chunks``; return (digest, size). When ``expect`` is given
        and the bytes hash to something else, nothing is stored and SourceError-like
        RegistryError is raised."""
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    if progress:
                        progress(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + h.hexdigest()
            if expect is not None and digest != expect:
                raise RegistryError(f"checksum mismatch: expected {expect}, got {digest}")
            final = self.path(digest)
            if final.exists():
                os.unlink(tmp)
            else:
                os.replace(tmp, final)
            return digest, size
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def put_file(self, src: Path, expect: str | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        with open(src, "rb") as f:
            return self.put_stream(iter_file(f), expect, progress)

    def put_bytes(self, data: bytes) -> str:
        return self.put_stream([data])[0]

    def read_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def remove_unreferenced(self, referenced: set[str]) -> int:
        """Delete blobs no manifest references; return bytes freed."""
        freed = 0
        for p in self.dir.iterdir():
            if p.name.startswith(".partial-"):
                continue
            digest = p.name.replace("-", ":", 1)
            if digest not in referenced:
                freed += p.stat().st_size
                p.unlink()
        return freed

    def clean_partials(self) -> None:
        for p in self.dir.glob(".partial-*"):
            p.unlink(missing_ok=True)


def iter_file(f: BinaryIO) -> Iterable[bytes]:
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        yield chunk


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter_file(f):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def free_space_ok(path: Path, need: int) -> bool:
    return shutil.disk_usage(path).free > need
