"""Content-addressed blob store under ``$OFICINA_HOME/blobs``.

A blob is named by the sha256 of its bytes (``sha256-<hex>``, Ollama's layout). Writes go to a
temp file in the same directory, are fsynced, then renamed into place, so an interrupted pull or
create never leaves a half-written blob under a real name. Digests from outside are validated
before they become paths.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from ..errors import RegistryError
from ..formats.digest import iter_file

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise RegistryError(f"invalid digest {digest!r} (expected sha256:<64 hex>)")
    return digest


class BlobStore:
    def __init__(self, root: Path, on_write: Callable[[], None] | None = None):
        self.root = Path(root)
        self.dir = self.root / "blobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.on_write = on_write  # the registry takes its writer's lock here (registry.py)

    def need(self, n: int) -> None:
        """Refuse to start writing ``n`` bytes that the disk cannot hold (plus 1% slack)."""
        free = shutil.disk_usage(self.dir).free
        if n + n // 100 > free:
            raise RegistryError(f"not enough disk space in {self.dir}: {_gb(n)} needed, {_gb(free)} free")

    def path(self, digest: str) -> Path:
        return self.dir / check_digest(digest).replace(":", "-")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_stream(self, chunks: Iterable[bytes], expect: str | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        """Store the concatenation of ``chunks``; return (digest, size). When ``expect`` is given
        and the bytes hash to something else, nothing is stored and SourceError-like
        RegistryError is raised."""
        if self.on_write:
            self.on_write()
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
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RegistryError(f"disk full while writing a blob to {self.dir} ({_gb(size)} written, "
                                    f"removed); free some space and retry") from None
            raise
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

    def clean_partials(self) -> int:
        """Remove every ``.partial-*`` file; only safe when no writer is running (the registry's
        lock says so). Returns the bytes freed."""
        freed = 0
        for p in self.dir.glob(".partial-*"):
            try:
                freed += p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                pass
        return freed


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.1f} MB"
