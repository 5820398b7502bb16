"""The conversation log (``serve/convlog.py``, written by the server's operations) for review in
the pages: list and search, one entry, rate or correct an answer (with fluency, coherence and
factuality scores), export as ``oficina tune`` chat records or ``oficina dpo`` preference pairs,
and the ``oficina stats`` summary."""

from __future__ import annotations

import json
from dataclasses import asdict

from starlette.responses import Response

from ..errors import OficinaError
from ..serve.convlog import RATED_CHOICES
from ..serve.export import chat_records, pair_records
from ..serve.stats import by_day, by_model
from .http import BadRequest, integer

SCORES = ("fluency", "coherence", "factuality")
LIST_FIELDS = ("id", "created", "model", "route", "finish", "error", "prompt_tokens", "output_tokens",
               "ttft_s", "total_s", "cost", "cached", "rating", "note", "better")


def _log(state):
    ops = getattr(state, "operations", None)
    if ops is None or ops.log is None:
        raise OficinaError("this server keeps no conversation log (started with --no-log)")
    return ops.log


def _find(data: dict, log):
    rated = data.get("rated") or None
    if rated is not None and rated not in RATED_CHOICES:
        raise BadRequest(f"'rated' must be one of {', '.join(RATED_CHOICES)}")
    return log.find(model=data.get("model") or None, text=data.get("text") or None, rated=rated,
                    failed=data.get("failed") in ("1", "true", True), limit=integer(data, "limit", 200))


def entries(data: dict, state) -> dict:
    found = _find(data, _log(state))
    return {"entries": [{**{k: getattr(e, k) for k in LIST_FIELDS}, "prompt": e.prompt_text(),
                         "output": e.output} for e in found]}


def entry(data: dict, state) -> dict:
    return asdict(_log(state).get(integer(data, "id", None) or 0))


def rate(data: dict, state) -> dict:
    """``rating`` good|bad, ``better`` a corrected answer, ``scores`` 1-5 per SCORES and a
    ``note``. The scores are written into the note ("fluency 4/5, ...") since the log's one
    place for a reviewer's words is the note."""
    scores = data.get("scores") or {}
    if not isinstance(scores, dict) or any(k not in SCORES for k in scores):
        raise BadRequest(f"'scores' takes {', '.join(SCORES)}")
    for k, v in scores.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5):
            raise BadRequest(f"{k} must be an integer from 1 to 5")
    parts = [f"{k} {scores[k]}/5" for k in SCORES if k in scores]
    note = data.get("note") or None
    if note is not None and not isinstance(note, str):
        raise BadRequest("'note' must be text")
    if parts or note:
        note = "; ".join(([", ".join(parts)] if parts else []) + ([note] if note else []))
    better = data.get("better") or None
    e = _log(state).rate(integer(data, "id", None) or 0, data.get("rating") or None, note, better)
    return {"id": e.id, "rating": e.rating, "note": e.note, "better": e.better}


def export(data: dict, state) -> Response:
    """JSONL that ``oficina tune`` (``format=chat``) or ``oficina dpo`` (``format=pairs``) reads,
    from the rated entries matching the filters; ``X-Oficina-Skipped`` says what was left out."""
    fmt = data.get("format", "chat")
    make = {"chat": chat_records, "pairs": pair_records}.get(fmt)
    if make is None:
        raise BadRequest("'format' must be chat or pairs")
    records, skipped = make(_find({**data, "rated": data.get("rated") or "any"}, _log(state)))
    if not records:
        raise OficinaError("nothing to export: no rated or corrected answers match")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return Response(text, media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="oficina-{fmt}.jsonl"',
        "X-Oficina-Skipped": json.dumps(skipped)})


def stats(_: dict, state) -> dict:
    """What ``oficina stats`` prints, from the same log."""
    found = _log(state).find(newest_first=False)
    return {"models": [asdict(s) for s in by_model(found)], "days": [asdict(d) for d in by_day(found)]}
