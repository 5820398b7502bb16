"""A file's sha256, read in chunks (blobs are gigabytes): the blob store names blobs by it, the
GGUF cache and evaluation key on it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO, Iterable

CHUNK = 1 << 20


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
