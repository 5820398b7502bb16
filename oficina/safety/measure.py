"""How good and how fast a guard is, on a held-out labelled file (not its training data).

Two file shapes, one per kind of guard:

- ``{"text", "label"}`` (classifiers; ``content_heldout.jsonl``): a text is predicted as the
  verdict's category when the guard blocks or flags it, else ``benign``.
- ``{"text", "entities": [{"category", "value"}]}`` (span finders; ``pii_heldout.jsonl``): an
  entity is found when the guard reports a span with exactly its text and category.
- ``{"text", "sources", "unsupported": [sentence, ...]}`` (``grounding_heldout.jsonl``): each
  sentence of the text is one item, ``ungrounded`` when listed, predicted ``ungrounded`` when the
  guard flags a span with exactly that sentence.

Per category: precision, recall, F1 and false-positive rate (texts of other categories, or with
no entity of this category, that the guard marks with it); for classifiers also ``(any harmful)``,
the filter's own question: blocked or flagged at all, whatever the category. Overall: macro-F1 over the harmful
categories with a 95% percentile-bootstrap interval (1,000 resamples of texts), and latency in
milliseconds per 1,000 characters (median over passes, texts joined into ~1,000-character pieces).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .grounding import sentences
from .guard import Guard, GuardError, get_guard

NEGATIVE = "benign"


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    negatives: int = 0  # texts that are not this category (for FPR)
    fp_texts: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0

    @property
    def fpr(self) -> float:
        return self.fp_texts / self.negatives if self.negatives else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "fpr": self.fpr,
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


@dataclass
class Measurement:
    guard: str
    data: str
    items: int
    categories: dict[str, Score]
    macro_f1: float
    macro_f1_ci: tuple[float, float]
    ms_per_1000_chars: float
    errors: list[str] = field(default_factory=list)  # "text -> what went wrong", for reading

    def to_dict(self) -> dict[str, Any]:
        return {"guard": self.guard, "data": self.data, "items": self.items,
                "categories": {k: v.to_dict() for k, v in self.categories.items()},
                "macro_f1": self.macro_f1, "macro_f1_ci95": list(self.macro_f1_ci),
                "ms_per_1000_chars": self.ms_per_1000_chars, "errors": self.errors}


def read(path: str | Path) -> list[dict]:
    out = []
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GuardError(f"cannot read {p}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise GuardError(f"{p}:{n}: not JSON ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or \
                not ("label" in obj or isinstance(obj.get("entities"), list) or
                     isinstance(obj.get("unsupported"), list)):
            raise GuardError(f'{p}:{n}: expected {{"text", "label"}}, {{"text", "entities"}} or '
                             f'{{"text", "sources", "unsupported"}}')
        out.append(obj)
    if not out:
        raise GuardError(f"{p}: no items")
    return out


def _sentence_pairs(guard: Guard, items: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    pairs, errors = [], []
    for it in items:
        text = it["text"]
        v = guard.check(text, {"sources": it.get("sources") or []})
        flagged = {text[s.start:s.end] for s in v.spans}
        for a, b in sentences(text):
            y = "ungrounded" if text[a:b] in it["unsupported"] else NEGATIVE
            pred = "ungrounded" if text[a:b] in flagged else NEGATIVE
            pairs.append((y, pred))
            if y != pred:
                errors.append(f"{text[a:b][:80]!r}: {y} -> {pred}")
    return pairs, errors


def _label_pairs(guard: Guard, items: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    pairs, errors = [], []
    for it in items:
        v = guard.check(it["text"])
        pred = v.category if v.verdict in ("block", "flag") and v.category else NEGATIVE
        pairs.append((it["label"], pred))
        if pred != it["label"]:
            errors.append(f"{it['text'][:80]!r}: {it['label']} -> {pred}")
    return pairs, errors


def _label_scores(pairs: list[tuple[str, str]], cats: list[str]) -> dict[str, Score]:
    out = {}
    for c in cats:
        s = Score()
        for y, p in pairs:
            s.tp += y == c and p == c
            s.fn += y == c and p != c
            s.fp += y != c and p == c
            s.negatives += y != c
            s.fp_texts += y != c and p == c
        out[c] = s
    return out


def _span_sets(guard: Guard, items: list[dict]) -> tuple[list[tuple[set, set]], list[str]]:
    rows, errors = [], []
    for it in items:
        text = it["text"]
        v = guard.check(text)
        got = {(text[s.start:s.end], s.category) for s in v.spans}
        want = {(e["value"], e["category"]) for e in it["entities"]}
        rows.append((want, got))
        if got != want:
            errors.append(f"{text[:80]!r}: missed {sorted(want - got)}, extra {sorted(got - want)}")
    return rows, errors


def _span_scores(rows: list[tuple[set, set]], cats: list[str]) -> dict[str, Score]:
    out = {}
    for c in cats:
        s = Score()
        for want, got in rows:
            w = {x for x in want if x[1] == c}
            g = {x for x in got if x[1] == c}
            s.tp += len(w & g)
            s.fn += len(w - g)
            s.fp += len(g - w)
            if not w:
                s.negatives += 1
                s.fp_texts += bool(g)
        out[c] = s
    return out


ANY = "(any harmful)"  # the filter's question: blocked or flagged at all, whatever the category


def _any(pairs: list[tuple[str, str]]) -> Score:
    s = Score()
    for y, p in pairs:
        hy, hp = y != NEGATIVE, p != NEGATIVE
        s.tp += hy and hp
        s.fn += hy and not hp
        s.fp += hp and not hy
        s.negatives += not hy
        s.fp_texts += hp and not hy
    return s


def _macro(scores: dict[str, Score]) -> float:
    vals = [s.f1 for c, s in scores.items() if c not in (NEGATIVE, ANY)]
    return sum(vals) / len(vals) if vals else 0.0


def latency(guard: Guard, texts: list[str], passes: int = 5, contexts: list[dict] | None = None) -> float:
    """Median milliseconds per 1,000 characters: texts joined into ~1,000-character pieces, or
    (with ``contexts``, one per text) each text checked with its own context."""
    if contexts is None:
        pieces, cur = [], ""
        for t in texts:
            cur = f"{cur} {t}" if cur else t
            if len(cur) >= 1000:
                pieces.append(cur)
                cur = ""
        pieces = pieces or [cur]
        calls = [(p, None) for p in pieces]
    else:
        calls = list(zip(texts, contexts))
    chars = sum(len(p) for p, _ in calls)
    guard.check(*calls[0])  # warm-up (first-call allocations)
    runs = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for p, ctx in calls:
            guard.check(p, ctx)
        runs.append((time.perf_counter() - t0) * 1000 * 1000 / chars)
    return statistics.median(runs)


def measure(spec: str, path: str | Path, resamples: int = 1000, seed: int = 0) -> Measurement:
    guard = get_guard(spec)
    items = read(path)
    rng = random.Random(seed)
    if all("entities" in it for it in items):
        rows, errors = _span_sets(guard, items)
        cats = sorted({c for want, got in rows for _, c in want | got})
        score = lambda rs: _macro(_span_scores(rs, cats))
        scores = _span_scores(rows, cats)
    else:
        grounded = all("unsupported" in it for it in items)
        rows, errors = (_sentence_pairs if grounded else _label_pairs)(guard, items)
        cats = sorted({y for y, _ in rows} | {p for _, p in rows})
        score = lambda rs: _macro(_label_scores(rs, cats))
        scores = _label_scores(rows, cats)
        if not grounded:
            scores[ANY] = _any(rows)
    boots = sorted(score([rows[rng.randrange(len(rows))] for _ in rows]) for _ in range(resamples))
    ci = (boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1])
    ms = latency(guard, [it["text"] for it in items],
                 contexts=[{"sources": it.get("sources") or []} for it in items]
                 if all("unsupported" in it for it in items) else None)
    return Measurement(guard.name, str(path), len(items), scores, _macro(scores), ci, ms, errors)
