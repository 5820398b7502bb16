"""Write a file so that readers see either the old one or the whole new one, never a torn one.

The bytes go to a temp file in the destination's own directory (``os.replace`` is only atomic
within one filesystem), are flushed and fsynced, then renamed over the destination. On any error
the temp file is removed and the destination is left as it was. (POSIX rename(2); the same recipe
as the blob store in ``registry/store.py``.)
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_write"]

_MODES = ("w", "wb", "wt")


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temp file next to ``path`` for writing; on a clean exit it becomes ``path``.

    The yielded file's ``name`` is the temp path, for writers that insist on opening the file
    themselves: fsync works on the file, not the descriptor, so their bytes are synced as well,
    provided they flushed and closed their handle before the ``with`` block ends.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write mode must be one of {_MODES}, got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.close(fd)  # reopened by name, so that f.name is the temp path
        kwargs = {} if "b" in mode else {"encoding": "utf-8"}
        with open(tmp, mode, **kwargs) as f:
            # mkstemp makes the file 0600; a replaced file keeps its mode, a new one gets 0644
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
