"""One SQLite connection per thread for a database file (the registry's, the prompt library's).

A ``sqlite3`` connection refuses use from a thread other than the one that opened it, and is not
safe to share; a server answers requests from many threads. So each thread opens its own on
first use; a thread's connection is closed when the thread has ended (noticed at the next
``get``) or by ``close()``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterator


class PerThread:
    def __init__(self, path: Path, schema: str, timeout: float = 30):
        self.path, self.timeout = Path(path), timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self.get().executescript(schema)  # once, by the thread that opens the store

    def get(self) -> sqlite3.Connection:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread off only so that close() and the sweep below may close a
            # connection from another thread; each is used by its own thread alone
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            self._local.db = db
            with self._lock:
                ended = [c for t, c in self._open if not t.is_alive()]
                self._open = [(t, c) for t, c in self._open if t.is_alive()] + [(threading.current_thread(), db)]
            for c in ended:
                c.close()
        return db

    def execute(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        return self.get().execute(sql, args)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection (BEGIN IMMEDIATE: writers queue up
        for the file's lock at the start rather than fail at the commit)."""
        db = self.get()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection; a later ``get`` opens a new one."""
        with self._lock:
            conns, self._open = [c for _, c in self._open], []
            self._local = threading.local()
        for c in conns:
            c.close()
