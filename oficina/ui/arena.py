"""The arena's votes: one prompt answered by two models or versions, shown blind, the user's pick.
Kept in SQLite in ``$OFICINA_HOME/arena.db`` so that votes from every browser add up; aggregated
per pair into a win rate with a Wilson score interval; exported as the preference pairs
``oficina dpo`` reads and the chat records ``oficina tune`` reads."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from starlette.responses import Response

from ..errors import OficinaError
from ..registry.registry import default_home
from .http import BadRequest, text

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id       INTEGER PRIMARY KEY,
    created  REAL NOT NULL,
    prompt   TEXT NOT NULL,
    a        TEXT NOT NULL,     -- model refs as asked ("name" or "name@N")
    b        TEXT NOT NULL,
    answer_a TEXT NOT NULL,
    answer_b TEXT NOT NULL,
    winner   TEXT NOT NULL      -- a | b | tie
);
"""
WINNERS = ("a", "b", "tie")
MAX_ANSWER = 100_000


def _db(home: Path | None = None) -> sqlite3.Connection:
    db = sqlite3.connect(Path(home or default_home()) / "arena.db", timeout=10, isolation_level=None)
    db.executescript(SCHEMA)
    return db


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for ``k`` successes in ``n`` trials (Wilson 1927): unlike the
    normal approximation it stays inside [0, 1] and means something for a handful of votes."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n)), min(1.0, (centre + spread) / (1 + z * z / n))


def vote(data: dict) -> dict:
    prompt, a, b = text(data, "prompt"), text(data, "a"), text(data, "b")
    answers = data.get("answers")
    if not (isinstance(answers, list) and len(answers) == 2 and all(isinstance(x, str) for x in answers)):
        raise BadRequest("'answers' must be the two answers, A's first")
    if any(len(x) > MAX_ANSWER for x in answers):
        raise BadRequest(f"an answer is longer than {MAX_ANSWER} characters")
    if data.get("winner") not in WINNERS:
        raise BadRequest(f"'winner' must be one of {', '.join(WINNERS)}")
    with closing(_db()) as db:
        cur = db.execute("INSERT INTO votes (created, prompt, a, b, answer_a, answer_b, winner) "
                         "VALUES (?,?,?,?,?,?,?)", (time.time(), prompt, a, b, *answers, data["winner"]))
    return {"id": cur.lastrowid, **results({})}


def results(_: dict) -> dict:
    """Per pair of models (in name order, so A-vs-B and B-vs-A add up): wins, losses, ties and
    the first's win rate with ties counted half, with its 95% interval."""
    pairs: dict[tuple[str, str], dict] = {}
    with closing(_db()) as db:
        rows = db.execute("SELECT a, b, winner FROM votes").fetchall()
    for a, b, winner in rows:
        x, y = sorted((a, b))
        p = pairs.setdefault((x, y), {"first": x, "second": y, "wins": 0, "losses": 0, "ties": 0})
        if winner == "tie":
            p["ties"] += 1
        elif (a if winner == "a" else b) == x:
            p["wins"] += 1
        else:
            p["losses"] += 1
    for p in pairs.values():
        n = p["wins"] + p["losses"] + p["ties"]
        k = p["wins"] + p["ties"] / 2
        p.update(votes=n, win_rate=k / n, interval=list(wilson(k, n)))
    votes = sum(p["votes"] for p in pairs.values())
    return {"votes": votes, "pairs": sorted(pairs.values(), key=lambda p: (p["first"], p["second"]))}


def export(data: dict) -> Response:
    """``format=pairs``: {"prompt", "chosen", "rejected"} per decided vote (``oficina dpo``);
    ``format=chat``: the prompt and the winning answer as a chat (``oficina tune``)."""
    fmt = data.get("format", "pairs")
    if fmt not in ("pairs", "chat"):
        raise BadRequest("'format' must be pairs or chat")
    with closing(_db()) as db:
        rows = db.execute("SELECT prompt, answer_a, answer_b, winner FROM votes WHERE winner != 'tie' "
                          "ORDER BY id").fetchall()
    out = []
    for prompt, answer_a, answer_b, winner in rows:
        chosen, rejected = (answer_a, answer_b) if winner == "a" else (answer_b, answer_a)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected} if fmt == "pairs" else
                   {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}]})
    if not out:
        raise OficinaError("nothing to export: no arena vote picked a winner yet")
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    return Response(body, media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="arena-{fmt}.jsonl"'})
