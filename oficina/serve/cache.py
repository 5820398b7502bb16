"""The response cache: answers to repeatable requests, in SQLite at ``$OFICINA_HOME/cache.db``.

A request is repeatable when its output is a function of its input: greedy decoding
(``temperature 0``) or a fixed ``seed`` (oficina's sampler draws from a seeded generator per
request, so the same seed, options and prompt give the same text). Only those are cached.

The key is the sha256 of the model's manifest digest and the whole request in a canonical form
(``normalize``): every option (the effective ``Options``, so ``"0"``, ``0`` and ``0.0`` agree
and a model default spelled out equals one left unset), the messages or prompt, system,
template, format, tools, raw, images... Only fields that change how the answer is *delivered*,
not what it is, are left out (``VOLATILE``: stream, keep_alive, ...). A new version of a model has
a new digest, so its answers never mix with the old one's.

A value is the answer as it was streamed: its text pieces in order plus the final line's fields
(done_reason, token counts, tool calls), so a hit replays byte-identical content with the same
chunk boundaries. The cache holds at most ``max_bytes``; the least recently used answers go first.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OficinaError
from ..options import Options, validate_mapping
from ..registry.registry import default_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key      TEXT PRIMARY KEY,
    model    TEXT NOT NULL,
    digest   TEXT NOT NULL,
    value    TEXT NOT NULL,       -- JSON {"pieces": [...], "final": {...}}
    size     INTEGER NOT NULL,
    created  REAL NOT NULL,
    used     REAL NOT NULL,
    hits     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS answers_used ON answers(used);
"""

# How the answer is delivered, not what it is (Ollama's and OpenAI's request fields).
VOLATILE = frozenset({"stream", "keep_alive", "stream_options", "user", "request_id"})
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass
class Cached:
    pieces: list[str]                                     # the text as streamed, chunk by chunk
    final: dict[str, Any] = field(default_factory=dict)   # done_reason, eval_count, tool_calls...

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def repeatable(options: Options | Mapping[str, Any]) -> bool:
    """Whether the same request gives the same answer: greedy, or a fixed seed."""
    o = options if isinstance(options, Options) else Options.from_mapping(options)
    return o.temperature == 0 or o.seed >= 0


def normalize(request: Mapping[str, Any], options: Options | None = None) -> str:
    """The request as canonical JSON. ``options``: the effective Options for this request (model
    defaults merged with the request's); without it the request's own ``options`` are checked and
    normalised as given."""
    body = {k: v for k, v in request.items() if k not in VOLATILE and k != "options"}
    if options is not None:
        opts = options.to_dict()
    else:
        opts = validate_mapping(request.get("options") or {})
    return json.dumps(_canonical({**body, "options": opts}), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))


def key(digest: str, request: Mapping[str, Any], options: Options | None = None) -> str:
    return hashlib.sha256(f"{digest}\n{normalize(request, options)}".encode()).hexdigest()


def _canonical(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


class ResponseCache:
    def __init__(self, path: Path | str, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=1.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def get(self, k: str) -> Cached | None:
        """The stored answer, or None. A cache that cannot be read is a miss, never an error."""
        try:
            db = self._db()
            row = db.execute("SELECT value FROM answers WHERE key = ?", (k,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE answers SET used = ?, hits = hits + 1 WHERE key = ?", (time.time(), k))
            value = json.loads(row[0])
            return Cached(value["pieces"], value.get("final", {}))
        except (sqlite3.Error, OSError, ValueError, KeyError):
            return None

    def put(self, k: str, model: str, digest: str, answer: Cached) -> bool:
        """Store an answer (replacing any under the same key) and evict down to ``max_bytes``.
        False when it is larger than the whole cache or the database refused it."""
        value = json.dumps({"pieces": answer.pieces, "final": answer.final}, ensure_ascii=False)
        size = len(value.encode()) + len(k) + len(model) + len(digest)
        if size > self.max_bytes:
            return False
        now = time.time()
        try:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO answers (key, model, digest, value, size, created, used) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (k, model, digest, value, size, now, now))
                self._evict(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return True
        except (sqlite3.Error, OSError):
            return False

    def _evict(self, db: sqlite3.Connection) -> None:
        total = db.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()[0]
        if total <= self.max_bytes:
            return
        excess = total - self.max_bytes
        for k, size in db.execute("SELECT key, size FROM answers ORDER BY used ASC").fetchall():
            db.execute("DELETE FROM answers WHERE key = ?", (k,))
            excess -= size
            if excess <= 0:
                break

    def stats(self) -> tuple[int, int]:
        """(answers, bytes) held now."""
        return self._db().execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM answers").fetchone()

    def clear(self) -> None:
        self._db().execute("DELETE FROM answers")


def default_path(home: Path | str | None = None) -> Path:
    return Path(home or default_home()) / "cache.db"


def parse_size(text: str) -> int:
    """``256MB``, ``1GiB``, ``500k``, ``1048576`` -> bytes."""
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
             "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
    s = text.strip().lower().replace(" ", "")
    num = s.rstrip("abgikm")
    unit = s[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1
    if unit not in units or value < 0:
        raise OficinaError(f"cannot read size {text!r}: use e.g. 256MB, 1GiB or a number of bytes")
    return int(value * units[unit])
