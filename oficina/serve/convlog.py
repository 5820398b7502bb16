"""The conversation log: every request the server answered, in SQLite at
``$OFICINA_HOME/logs.db``, for review (``oficina logs``), statistics (``oficina stats``) and
training data (``oficina logs export``).

Two promises shape this module:

- **Logging never fails a request.** A locked database or a full disk makes ``record`` keep the
  entry in memory and retry from a background thread; past ``MAX_PENDING`` entries (or at close)
  what is left is counted as dropped (``dropped``, and the ``on_drop`` callback that feeds the
  ``oficina:log_entries_dropped_total`` metric). ``record`` never raises.
- **A killed server loses no answered entry.** The database runs in WAL mode with
  ``synchronous=NORMAL``: a committed transaction survives the process being killed (only an OS
  crash or power loss can roll back the last ones; sqlite.org/wal.html "Durability"), and the
  server records an entry before it sends the response's last line.

Each thread has its own connection (the server answers from many at once).
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import OficinaError
from ..registry.registry import default_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id            INTEGER PRIMARY KEY,
    created       REAL NOT NULL,       -- when the request arrived (unix seconds)
    route         TEXT NOT NULL,       -- "/api/chat", "/v1/chat/completions", ...
    model         TEXT NOT NULL,       -- the name the client asked for
    digest        TEXT NOT NULL DEFAULT '',  -- the manifest digest that answered
    key_id        TEXT NOT NULL DEFAULT '',  -- which API key (its id, never the key)
    messages      TEXT NOT NULL,       -- JSON [{"role", "content"}, ...]: the prompt as a chat
    options       TEXT NOT NULL DEFAULT '{}',  -- JSON: the sampling options that applied
    extra         TEXT NOT NULL DEFAULT '{}',  -- JSON: format, tools, template, raw, ...
    output        TEXT NOT NULL DEFAULT '',
    tool_calls    TEXT NOT NULL DEFAULT '[]',
    finish        TEXT NOT NULL DEFAULT '',  -- stop | length | error | cancelled | ...
    error         TEXT NOT NULL DEFAULT '',
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    queue_s       REAL,
    ttft_s        REAL,
    total_s       REAL,
    cost          REAL,
    cached        INTEGER NOT NULL DEFAULT 0,
    rating        TEXT,                -- good | bad (a reviewer's)
    note          TEXT,
    better        TEXT,                -- a reviewer's corrected answer
    rated_at      REAL
);
CREATE INDEX IF NOT EXISTS entries_created ON entries(created);
CREATE INDEX IF NOT EXISTS entries_model ON entries(model, created);
"""

MAX_PENDING = 10_000          # entries held in memory while the database cannot take them
RETRY_SECONDS = 1.0
RATINGS = ("good", "bad")


@dataclass
class Entry:
    """One answered (or failed) request. ``messages`` is the prompt as a chat, whatever the route:
    a generate request is ``[system?, user]``."""

    route: str
    model: str
    messages: list[dict[str, Any]]
    output: str = ""
    digest: str = ""
    key_id: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[Any] = field(default_factory=list)
    finish: str = ""
    error: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    queue_s: float | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    cost: float | None = None
    cached: bool = False
    created: float = field(default_factory=time.time)
    # set by the database and by reviewers
    id: int | None = None
    rating: str | None = None
    note: str | None = None
    better: str | None = None
    rated_at: float | None = None

    @property
    def failed(self) -> bool:
        return bool(self.error) or self.finish in ("error", "timeout")

    def prompt_text(self) -> str:
        """The last user turn (what a list shows)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return str(m.get("content") or "")
        return ""


_JSON = ("messages", "options", "extra", "tool_calls")
_COLUMNS = [f.name for f in fields(Entry) if f.name != "id"]


# -- redaction: a registry of named rules -----------------------------------------------------------
# Patterns for the usual personal data; a rule replaces a match with its own tag, so a reviewer
# still sees that something was there. "prompts" drops the prompt text entirely (its hash stays,
# so repeated prompts can still be counted).
REDACTIONS: dict[str, re.Pattern] = {
    "email": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "card": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
    "phone": re.compile(r"(?<![\w+])\+?\d[\d ().-]{7,}\d\b"),
    "ip": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
}
REDACT_ALL = "prompts"


def parse_redact(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"email,phone"`` -> ``("email", "phone")``, checked against the rules."""
    if not value:
        return ()
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    known = (*REDACTIONS, REDACT_ALL)
    for n in names:
        if n not in known:
            raise OficinaError(f"unknown redaction {n!r}; choose from {', '.join(known)}")
    return tuple(names)


def redact_text(text: str, rules: tuple[str, ...]) -> str:
    for name in rules:
        if name in REDACTIONS:
            text = REDACTIONS[name].sub(f"[{name}]", text)
    return text


def _redact(e: Entry, rules: tuple[str, ...]) -> Entry:
    if not rules:
        return e
    messages = []
    for m in e.messages:
        content = m.get("content")
        if isinstance(content, str):
            if REDACT_ALL in rules and m.get("role") != "assistant":
                digest = hashlib.sha256(content.encode()).hexdigest()[:16]
                content = f"[redacted {len(content)} chars sha256:{digest}]"
            else:
                content = redact_text(content, rules)
        messages.append({**m, "content": content})
    return Entry(**{**asdict(e), "messages": messages, "output": redact_text(e.output, rules)})


# -- the log --------------------------------------------------------------------------------------
class ConvLog:
    def __init__(self, path: Path | str, retention_days: float | None = None, redact: tuple[str, ...] = (),
                 on_drop: Callable[[int], None] | None = None, busy_ms: int = 100):
        self.path = Path(path)
        self.retention_days = retention_days
        self.redact = parse_redact(redact)
        self.on_drop = on_drop
        self.busy_ms = busy_ms
        self.dropped = 0
        self._local = threading.local()
        self._pending: collections.deque[Entry] = collections.deque()
        self._lock = threading.Lock()
        self._retrier: threading.Thread | None = None
        self._closed = threading.Event()
        self._last_prune = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db().executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise OficinaError(f"{self.path}: cannot open the conversation log ({e})") from None
        self.prune()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.busy_ms / 1000, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    # -- writing ----------------------------------------------------------------------------------
    def record(self, entry: Entry) -> int | None:
        """Store one entry; its id, or None when the database could not take it now (then it is
        retried in the background, or counted as dropped). Never raises."""
        try:
            entry = _redact(entry, self.redact)
            if self._pending:
                self._flush()
            rowid = self._insert([entry])[0]
            if self.retention_days and time.time() - self._last_prune > 3600:
                self.prune()
            return rowid
        except (sqlite3.Error, OSError):
            self._defer(entry)
            return None
        except Exception:  # a bug here must still not fail the request it describes
            self._count_dropped(1)
            return None

    def _insert(self, entries: list[Entry]) -> list[int]:
        db = self._db()
        ids = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for e in entries:
                values = [json.dumps(getattr(e, c), ensure_ascii=False) if c in _JSON else getattr(e, c)
                          for c in _COLUMNS]
                cur = db.execute(f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES "
                                 f"({', '.join('?' * len(_COLUMNS))})", values)
                ids.append(cur.lastrowid)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return ids

    def _defer(self, entry: Entry) -> None:
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._count_dropped(1)
                return
            self._pending.append(entry)
            if self._retrier is None or not self._retrier.is_alive():
                self._retrier = threading.Thread(target=self._retry_loop, name="convlog-retry", daemon=True)
                self._retrier.start()

    def _retry_loop(self) -> None:
        while not self._closed.wait(RETRY_SECONDS):
            try:
                self._flush()
            except (sqlite3.Error, OSError):
                continue
            if not self._pending:
                return

    def _flush(self) -> None:
        with self._lock:
            batch = list(self._pending)
            if batch:
                self._insert(batch)
                self._pending.clear()

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        if self.on_drop:
            try:
                self.on_drop(n)
            except Exception:
                pass

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Write what is pending if the database takes it now; count the rest as dropped."""
        self._closed.set()
        try:
            self._flush()
        except (sqlite3.Error, OSError):
            with self._lock:
                self._count_dropped(len(self._pending))
                self._pending.clear()
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def prune(self) -> int:
        """Delete entries older than the retention setting; how many went."""
        self._last_prune = time.time()
        if not self.retention_days:
            return 0
        try:
            cur = self._db().execute("DELETE FROM entries WHERE created < ?",
                                     (time.time() - self.retention_days * 86400,))
            return cur.rowcount
        except sqlite3.Error:
            return 0

    # -- reading and reviewing ------------------------------------------------------------------
    def get(self, entry_id: int) -> Entry:
        rows = list(self._select("WHERE id = ?", (entry_id,)))
        if not rows:
            raise OficinaError(f"no log entry {entry_id}")
        return rows[0]

    def find(self, *, model: str | None = None, since: float | None = None, until: float | None = None,
             text: str | None = None, slow: float | None = None, failed: bool = False,
             rated: str | None = None, limit: int | None = None, newest_first: bool = True) -> list[Entry]:
        """Entries matching every filter given. ``rated``: good, bad, corrected, any or none."""
        where, args = [], []
        if model:
            where.append("(model = ? OR model = ?)")
            args += [model, model if ":" in model else f"{model}:latest"]
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        if until is not None:
            where.append("created < ?")
            args.append(until)
        if text:
            where.append("(messages LIKE ? ESCAPE '\\' OR output LIKE ? ESCAPE '\\')")
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [pattern, pattern]
        if slow is not None:
            where.append("total_s >= ?")
            args.append(slow)
        if failed:
            where.append("(error != '' OR finish IN ('error', 'timeout'))")
        if rated:
            where.append(_RATED[rated])
        sql = ("WHERE " + " AND ".join(where) if where else "") + \
              f" ORDER BY id {'DESC' if newest_first else 'ASC'}" + (f" LIMIT {int(limit)}" if limit else "")
        return list(self._select(sql, args))

    def rate(self, entry_id: int, rating: str | None, note: str | None = None, better: str | None = None) -> Entry:
        if rating is not None and rating not in RATINGS:
            raise OficinaError(f"rating must be one of {', '.join(RATINGS)} (got {rating!r})")
        if better is not None and not better.strip():
            raise OficinaError("--better is empty; give the answer the model should have given")
        self.get(entry_id)
        sets, args = ["rated_at = ?"], [time.time()]
        for col, value in (("rating", rating), ("note", note), ("better", better)):
            if value is not None:
                sets.append(f"{col} = ?")
                args.append(value)
        self._db().execute(f"UPDATE entries SET {', '.join(sets)} WHERE id = ?", (*args, entry_id))
        return self.get(entry_id)

    def count(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def _select(self, sql: str, args: Iterable[Any]) -> Iterator[Entry]:
        cols = ["id", *_COLUMNS]
        for row in self._db().execute(f"SELECT {', '.join(cols)} FROM entries {sql}", tuple(args)):
            values = dict(zip(cols, row))
            for c in _JSON:
                values[c] = json.loads(values[c])
            values["cached"] = bool(values["cached"])
            yield Entry(**values)


_RATED = {
    "good": "rating = 'good'",
    "bad": "rating = 'bad'",
    "corrected": "better IS NOT NULL",
    "any": "(rating IS NOT NULL OR better IS NOT NULL)",
    "none": "(rating IS NULL AND better IS NULL)",
}
RATED_CHOICES = tuple(_RATED)


def default_path(home: Path | str | None = None) -> Path:
    return Path(home or default_home()) / "logs.db"
