"""Measure a collection + settings on a question file (``{"question", "answer"?, "sources",
"evidence"?}`` per line; ``"answer": null`` marks a question the documents cannot answer).

A retrieved chunk is relevant when it comes from one of the question's sources and, when the
question gives its supporting sentence (``evidence``), contains it (whitespace and case
folded). Retrieval: recall@k (the evidence is in the top k), MRR and nDCG@10 (binary gains;
Järvelin & Kekäläinen 2002). Answers: correctness as "contains the reference" and ROUGE-L F1
(rouge-score), citation precision (cited blocks that are relevant), the "I don't know" rate on
unanswerable questions (and the false one on answerable questions), mean seconds per stage.
Settings (collection, k, hybrid, rerank, model, no retrieval) are run one after another and
reported side by side.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, OficinaError
from ..generation.session import load
from ..report import reporter
from .answer import IDK, THRESHOLD, _is_idk, ask
from .retrieve import Collection, Hit, retrieve


@dataclass
class Question:
    question: str
    answer: str | None
    sources: list[str]
    evidence: str | None = None

    @property
    def answerable(self) -> bool:
        return self.answer is not None


def read_questions(path: str | Path) -> list[Question]:
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            q = Question(str(d["question"]), d.get("answer"), list(d.get("sources") or []),
                         d.get("evidence"))
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"{path} line {n}: expected {{\"question\", \"answer\"?, "
                              f"\"sources\": [...]}} ({e})") from None
        out.append(q)
    if not out:
        raise FormatError(f"{path}: no questions")
    return out


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def relevant(hit: Hit, q: Question) -> bool:
    name = hit.source.split("#", 1)[0].rsplit("/", 1)[-1]
    if not any(name == s or hit.source.endswith(s) for s in q.sources):
        return False
    return q.evidence is None or _norm(q.evidence) in _norm(hit.text)


# -- metrics on ranked relevance lists (1 = relevant), hand-checkable ----------------------------

def recall_at(rels: list[int], k: int) -> float:
    return 1.0 if any(rels[:k]) else 0.0


def reciprocal_rank(rels: list[int]) -> float:
    return next((1.0 / r for r, x in enumerate(rels, 1) if x), 0.0)


def ndcg_at(rels: list[int], n_relevant: int, k: int = 10) -> float:
    dcg = sum(x / math.log2(r + 1) for r, x in enumerate(rels[:k], 1))
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(n_relevant, k) + 1))
    return dcg / ideal if ideal else 0.0


def contains(prediction: str, reference: str) -> float:
    return 1.0 if _norm(reference) in _norm(prediction) else 0.0


def rouge_l(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure


def citation_precision(cited: list[int], rels: list[int]) -> float | None:
    """Share of cited block numbers (1-based) whose chunk is relevant; None without citations."""
    if not cited:
        return None
    return sum(1 for n in cited if 1 <= n <= len(rels) and rels[n - 1]) / len(cited)


@dataclass
class Setting:
    collection: str
    k: int = 4
    hybrid: bool = False
    rerank: str | None = None
    model: str | None = None  # None: retrieval metrics only
    retrieval: bool = True  # False: the model answers with no documents (the baseline)
    threshold: float = THRESHOLD

    @property
    def label(self) -> str:
        parts = [self.collection, f"k={self.k}"]
        if self.hybrid:
            parts.append("hybrid")
        if self.rerank:
            parts.append(f"rerank={self.rerank}")
        if self.model:
            parts.append(self.model if self.retrieval else f"{self.model} (no retrieval)")
        return " ".join(parts)


@dataclass
class Result:
    setting: Setting
    metrics: dict[str, float | None]
    items: list[dict[str, Any]] = field(default_factory=list)


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def run(setting: Setting, questions: list[Question], registry=None, models: dict | None = None,
        encoder=None, **options) -> Result:
    col = Collection(setting.collection, registry, encoder=encoder)
    model = None
    if setting.model:
        models = models if models is not None else {}
        if setting.model not in models:
            models[setting.model] = load(setting.model, registry=col.registry)
        model = models[setting.model]
    all_chunks = col.chunks()
    items = []
    with reporter().progress(setting.label, total=len(questions)) as bar:
        for q in questions:
            bar.advance()
            item: dict[str, Any] = {"question": q.question, "answerable": q.answerable}
            if q.answerable and setting.retrieval:
                r = retrieve(col, q.question, max(setting.k, 10), setting.hybrid, setting.rerank)
                rels = [int(relevant(h, q)) for h in r.hits]
                n_rel = sum(relevant(h, q) for h in all_chunks)
                item.update(recall=recall_at(rels, setting.k), rr=reciprocal_rank(rels[:10]),
                            ndcg=ndcg_at(rels, n_rel), embed=r.seconds["embed"],
                            search=r.seconds["search"])
            if model is not None:
                if setting.retrieval:
                    a = ask(col, q.question, model, setting.k, setting.hybrid, setting.rerank,
                            threshold=setting.threshold, **options)
                    text, idk = a.answer, a.idk
                    rels = [int(relevant(h, q)) for h in a.hits]
                    item.update(answer=text, citations=a.citations, attributed=a.attributed,
                                removed=a.removed_citations,
                                cite_precision=citation_precision(a.citations + a.attributed, rels)
                                if q.answerable else None,
                                generate=a.timings.get("generate"))
                else:
                    text = model.chat([{"role": "user", "content": q.question}],
                                      **{"temperature": 0, "num_predict": 64, **options})
                    idk = _is_idk(text) or text.strip() == IDK
                    item.update(answer=text)
                item["idk"] = idk
                if q.answerable:
                    item.update(contains=contains(text, q.answer), rouge_l=rouge_l(text, q.answer))
            items.append(item)
    ans = [i for i in items if i["answerable"]]
    una = [i for i in items if not i["answerable"]]
    m: dict[str, float | None] = {
        f"recall@{setting.k}": _mean([i.get("recall") for i in ans]),
        "mrr": _mean([i.get("rr") for i in ans]),
        "ndcg@10": _mean([i.get("ndcg") for i in ans]),
    }
    if model is not None:
        m.update({"correct": _mean([i.get("contains") for i in ans]),
                  "rouge_l": _mean([i.get("rouge_l") for i in ans]),
                  "cite_precision": _mean([i.get("cite_precision") for i in ans]),
                  "idk_unanswerable": _mean([float(i["idk"]) for i in una]),
                  "idk_answerable": _mean([float(i["idk"]) for i in ans])})
    m.update({"embed_s": _mean([i.get("embed") for i in ans]),
              "search_s": _mean([i.get("search") for i in ans]),
              "generate_s": _mean([i.get("generate") for i in items])})
    return Result(setting, m, items)


def compare(settings: list[Setting], questions: list[Question], registry=None, **options) -> list[Result]:
    if not settings:
        raise OficinaError("no settings to evaluate")
    models: dict = {}
    return [run(s, questions, registry, models, **options) for s in settings]
