"""The SQLite store of a collection version: documents (by digest, for incremental ingest),
chunks (text, span, page, section, tags, injection flags) and their vectors, so the FAISS index
can be rebuilt or re-kinded without re-embedding. Chunk ids are the index's ids."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id       INTEGER PRIMARY KEY,
    source   TEXT NOT NULL UNIQUE,
    digest   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    title    TEXT,
    size     INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    ingested REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id       INTEGER PRIMARY KEY,
    doc      INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord      INTEGER NOT NULL,
    text     TEXT NOT NULL,
    page     INTEGER,
    section  TEXT,
    start    INTEGER NOT NULL,
    end      INTEGER NOT NULL,
    tokens   INTEGER NOT NULL,
    flags    TEXT NOT NULL DEFAULT '',
    vector   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc);
"""
CHUNK_COLUMNS = "c.id, c.text, c.page, c.section, c.start, c.end, c.flags, d.source, d.title, d.kind, d.metadata"


def open_rw(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(SCHEMA)
    return db


def open_ro(path: Path) -> sqlite3.Connection:
    """A published version: a blob that never changes (``immutable`` skips locking and never
    writes a journal next to it)."""
    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    return db


def vectors(db: sqlite3.Connection, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rows = db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return ids, vecs


def meta(db: sqlite3.Connection) -> dict:
    return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
