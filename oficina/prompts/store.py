"""Named prompts, versioned, in SQLite (``$OFICINA_HOME/prompts.db``).

A version is immutable: adding a changed prompt makes version N+1, adding the same content again
changes nothing. Labels (``production``, ``staging``, ...) point at a version and move; every move
is kept, so ``history`` shows what served when, as ``oficina history`` does for models. A
reference is ``NAME`` (the newest version), ``NAME@3`` or ``NAME:production``. Each write is one
transaction: nothing is stored half-way.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..registry.db import PerThread
from ..registry.registry import default_home
from .spec import PromptError, PromptSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompt_versions (
    name     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    body     TEXT NOT NULL,
    digest   TEXT NOT NULL,
    created  REAL NOT NULL,
    source   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS prompt_labels (
    name     TEXT NOT NULL,
    label    TEXT NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (name, label)
);
CREATE TABLE IF NOT EXISTS prompt_label_moves (
    name     TEXT NOT NULL,
    label    TEXT NOT NULL,
    version  INTEGER NOT NULL,
    previous INTEGER,
    moved    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prompt_tests (
    name     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    model    TEXT NOT NULL,
    passed   INTEGER NOT NULL,
    total    INTEGER NOT NULL,
    score    REAL NOT NULL,
    at       REAL NOT NULL
);
"""
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_REF = re.compile(r"(?P<name>[^@:]+)(?:@(?P<version>\d+)|:(?P<label>[A-Za-z0-9._-]+))?")


@dataclass(frozen=True)
class StoredPrompt:
    name: str
    version: int
    spec: PromptSpec
    digest: str
    created: float
    source: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, values: dict | None = None) -> str:
        return self.spec.render(values, self.ref)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise PromptError(f"invalid prompt name {name!r}: lowercase letters, digits, . _ -, "
                          f"starting with a letter or digit")
    return name


class PromptStore:
    def __init__(self, home: Path | str | None = None):
        self.home = Path(home) if home else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self._db = PerThread(self.home / "prompts.db", SCHEMA)  # one connection per thread

    def _tx(self):
        return self._db.transaction()

    def close(self) -> None:
        """Close the database connections (every thread's); the store reopens on next use."""
        self._db.close()

    # -- writing --------------------------------------------------------------------------------
    def add(self, name: str, spec: PromptSpec, source: str = "") -> tuple[StoredPrompt, bool]:
        """Store ``spec`` as the next version of ``name``; (the version, whether it is new)."""
        check_name(name)
        body = json.dumps(spec.to_dict(), sort_keys=True, ensure_ascii=False)
        digest = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
        with self._tx():
            row = self._db.execute("SELECT version, digest FROM prompt_versions WHERE name=? "
                                   "ORDER BY version DESC LIMIT 1", (name,)).fetchone()
            if row and row[1] == digest:
                return self.get(f"{name}@{row[0]}"), False
            version = (row[0] if row else 0) + 1
            self._db.execute("INSERT INTO prompt_versions VALUES (?,?,?,?,?,?)",
                             (name, version, body, digest, time.time(), source))
        return self.get(f"{name}@{version}"), True

    def label(self, name: str, label: str, version: int) -> int | None:
        """Point ``label`` at ``version``; returns the version it pointed at before."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", label) or label == "latest":
            raise PromptError(f"invalid label {label!r} (letters, digits, . _ -; not 'latest')")
        self.get(f"{name}@{version}")
        with self._tx():
            row = self._db.execute("SELECT version FROM prompt_labels WHERE name=? AND label=?",
                                   (name, label)).fetchone()
            self._db.execute("INSERT OR REPLACE INTO prompt_labels VALUES (?,?,?)", (name, label, version))
            self._db.execute("INSERT INTO prompt_label_moves VALUES (?,?,?,?,?)",
                             (name, label, version, row[0] if row else None, time.time()))
        return row[0] if row else None

    def record_test(self, p: StoredPrompt, model: str, passed: int, total: int, score: float) -> None:
        with self._tx():
            self._db.execute("INSERT INTO prompt_tests VALUES (?,?,?,?,?,?,?)",
                             (p.name, p.version, model, passed, total, score, time.time()))

    # -- reading --------------------------------------------------------------------------------
    def get(self, ref: str) -> StoredPrompt:
        m = _REF.fullmatch(ref.strip())
        if not m:
            raise PromptError(f"invalid prompt reference {ref!r} (NAME, NAME@VERSION or NAME:LABEL)")
        name, version, label = m["name"], m["version"], m["label"]
        if label and label != "latest":
            row = self._db.execute("SELECT version FROM prompt_labels WHERE name=? AND label=?",
                                   (name, label)).fetchone()
            if not row:
                raise PromptError(f"prompt {name!r} has no label {label!r}")
            version = row[0]
        q = "SELECT version, body, digest, created, source FROM prompt_versions WHERE name=?"
        row = (self._db.execute(q + " AND version=?", (name, int(version))).fetchone() if version
               else self._db.execute(q + " ORDER BY version DESC LIMIT 1", (name,)).fetchone())
        if not row:
            known = self._db.execute("SELECT 1 FROM prompt_versions WHERE name=?", (name,)).fetchone()
            raise PromptError(f"prompt {name!r} has no version {version}" if known
                              else f"no prompt named {name!r} (oficina prompt list)")
        return StoredPrompt(name, row[0], PromptSpec.from_dict(json.loads(row[1])), row[2], row[3], row[4])

    def names(self) -> list[tuple[str, int, float, dict[str, int]]]:
        """(name, newest version, its time, {label: version}) for every prompt."""
        rows = self._db.execute("SELECT name, MAX(version), MAX(created) FROM prompt_versions "
                                "GROUP BY name ORDER BY name").fetchall()
        labels: dict[str, dict[str, int]] = {}
        for n, lab, v in self._db.execute("SELECT name, label, version FROM prompt_labels"):
            labels.setdefault(n, {})[lab] = v
        return [(n, v, t, labels.get(n, {})) for n, v, t in rows]

    def history(self, name: str) -> tuple[list[StoredPrompt], list[tuple[str, int, int | None, float]],
                                           list[tuple]]:
        """Every version, every label move (label, to, from, when), every recorded test."""
        versions = [self.get(f"{name}@{v}") for (v,) in self._db.execute(
            "SELECT version FROM prompt_versions WHERE name=? ORDER BY version", (name,))]
        if not versions:
            raise PromptError(f"no prompt named {name!r} (oficina prompt list)")
        moves = self._db.execute("SELECT label, version, previous, moved FROM prompt_label_moves "
                                 "WHERE name=? ORDER BY moved", (name,)).fetchall()
        tests = self._db.execute("SELECT version, model, passed, total, score, at FROM prompt_tests "
                                 "WHERE name=? ORDER BY at", (name,)).fetchall()
        return versions, moves, tests

    def diff(self, a: str, b: str) -> str:
        pa, pb = self.get(a), self.get(b)
        return "".join(difflib.unified_diff(pa.spec.to_yaml().splitlines(True),
                                            pb.spec.to_yaml().splitlines(True), pa.ref, pb.ref))
