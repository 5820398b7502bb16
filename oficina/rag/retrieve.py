"""Question -> the chunks to answer from.

Vector search over the version's FAISS index (cosine: vectors are unit length), optionally
fused with BM25 (bm25s) by reciprocal rank fusion (Cormack, Clarke & Büttcher 2009: score =
sum over rankings of 1 / (60 + rank)), optionally re-ranked by a cross-encoder from the
registry, filtered by metadata (source, tag, kind) through FAISS' ID selector. The vector score
of every hit is kept: it is what the "I don't know" threshold compares against.
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import OficinaError
from ..registry.registry import Entry, Registry
from . import index, store
from .collection import CollectionConfig, display, find
from .embed import Encoder, load_encoder
from .rerank import rerank as do_rerank

RRF_K = 60  # Cormack et al.: the constant that worked across TREC runs


@dataclass
class Hit:
    id: int
    text: str
    source: str
    title: str | None
    page: int | None
    section: str | None
    start: int
    end: int
    flags: list[str]
    score: float  # cosine similarity to the question (0 when found only by BM25)
    rank_score: float  # what the final order is by: cosine, RRF or the cross-encoder's logit
    metadata: dict[str, Any] = field(default_factory=dict)

    def where(self) -> str:
        parts = [self.source]
        if self.page:
            parts.append(f"page {self.page}")
        if self.section:
            parts.append(f"§ {self.section}")
        parts.append(f"chars {self.start}-{self.end}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "title": self.title, "page": self.page,
                "section": self.section, "start": self.start, "end": self.end,
                "score": round(self.score, 6), "rank_score": round(self.rank_score, 6),
                "flags": self.flags, "text": self.text}


@dataclass
class Filters:
    source: str | None = None  # glob over the source path, e.g. "*.pdf" or "*/manuals/*"
    tag: str | None = None
    kind: str | None = None  # md, html, pdf, txt, jsonl

    def __bool__(self) -> bool:
        return bool(self.source or self.tag or self.kind)


class Collection:
    """One version of a collection, opened for search (read-only; safe to share)."""

    def __init__(self, name: str, registry: Registry | None = None, version: int | None = None,
                 encoder: Encoder | None = None):
        self.registry = registry or Registry()
        self.entry: Entry = find(name, self.registry, version)
        self.name = display(self.entry.name)
        self.config = CollectionConfig.from_params(self.entry.manifest.params)
        folder = self.registry.snapshot(self.entry)
        self.db = store.open_ro(folder / "store.sqlite")
        self.index = index.load(folder / "index.faiss")
        n = self.db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        if self.index.ntotal != n:
            raise OficinaError(f"collection {self.name}@{self.entry.version}: index has "
                               f"{self.index.ntotal} vectors but the store {n} chunks")
        self._encoder = encoder
        self._bm25 = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.config.embed, self.registry)
        return self._encoder

    def __len__(self) -> int:
        return self.index.ntotal

    def chunks(self, ids: list[int] | None = None) -> list[Hit]:
        sql = f"SELECT {store.CHUNK_COLUMNS} FROM chunks c JOIN documents d ON d.id = c.doc"
        rows = self.db.execute(sql + " ORDER BY c.id").fetchall() if ids is None else \
            self.db.execute(sql + f" WHERE c.id IN ({','.join('?' * len(ids))})", ids).fetchall()
        hits = {r[0]: Hit(r[0], r[1], r[7], r[8], r[2], r[3], r[4], r[5],
                          [f for f in r[6].split(",") if f], 0.0, 0.0, json.loads(r[10]))
                for r in rows}
        return list(hits.values()) if ids is None else [hits[i] for i in ids if i in hits]

    def vectors(self, ids: list[int]) -> np.ndarray:
        rows = dict(self.db.execute(f"SELECT id, vector FROM chunks WHERE id IN "
                                    f"({','.join('?' * len(ids))})", ids).fetchall())
        return np.stack([np.frombuffer(rows[i], dtype=np.float32) for i in ids])

    def documents(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT d.source, d.kind, d.title, d.size, d.digest, d.metadata, COUNT(c.id), "
            "SUM(c.flags != '') FROM documents d LEFT JOIN chunks c ON c.doc = d.id "
            "GROUP BY d.id ORDER BY d.source").fetchall()
        return [{"source": r[0], "kind": r[1], "title": r[2], "size": r[3], "digest": r[4],
                 "metadata": json.loads(r[5]), "chunks": r[6], "flagged": r[7] or 0} for r in rows]

    def flagged(self) -> list[Hit]:
        ids = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE flags != '' ORDER BY id")]
        return self.chunks(ids)

    def allowed(self, f: Filters) -> np.ndarray | None:
        if not f:
            return None
        rows = self.db.execute("SELECT c.id, d.source, d.kind, d.metadata FROM chunks c "
                               "JOIN documents d ON d.id = c.doc").fetchall()
        keep = []
        for cid, source, kind, meta in rows:
            if f.source and not fnmatch.fnmatch(source, f.source) and \
                    not fnmatch.fnmatch(source.rsplit("/", 1)[-1], f.source):
                continue
            if f.kind and kind != f.kind:
                continue
            if f.tag:
                tags = json.loads(meta).get("tags", [])
                if f.tag not in (tags if isinstance(tags, list) else [tags]):
                    continue
            keep.append(cid)
        return np.array(keep, dtype=np.int64)

    # -- BM25 ---------------------------------------------------------------------------------
    def bm25(self):
        """A bm25s index over the chunk texts, built on first use (seconds for 10k chunks)."""
        if self._bm25 is None:
            import bm25s

            rows = self.db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            retriever = bm25s.BM25()
            if rows:
                tokens = bm25s.tokenize([r[1] for r in rows], stopwords="en", show_progress=False)
                retriever.index(tokens, show_progress=False)
            self._bm25 = (retriever, ids)
        return self._bm25

    def bm25_search(self, query: str, k: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        import bm25s

        retriever, ids = self.bm25()
        if not len(ids):
            return []
        q = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not q.vocab:
            return []
        n = len(ids)
        docs, scores = retriever.retrieve(q, k=n if allowed is not None else min(k, n),
                                          show_progress=False, n_threads=1)
        out = [(int(ids[d]), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]
        if allowed is not None:
            ok = set(allowed.tolist())
            out = [(i, s) for i, s in out if i in ok]
        return out[:k]


@dataclass
class Retrieval:
    hits: list[Hit]
    seconds: dict[str, float]  # embed, search (and rerank)
    hybrid: bool
    reranker: str | None

    @property
    def best_score(self) -> float:
        return max((h.score for h in self.hits), default=0.0)


def rrf(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked id lists (best first) -> [(id, fused score)] best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking, 1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda t: (-t[1], t[0]))


def retrieve(col: Collection, question: str, k: int = 4, hybrid: bool = False,
             rerank: str | None = None, filters: Filters | None = None,
             depth: int | None = None) -> Retrieval:
    """The ``k`` best chunks for ``question``. Hybrid and rerank look at ``depth`` candidates
    (default 4k) before cutting to k."""
    if k < 1:
        raise OficinaError("k must be at least 1")
    filters = filters or Filters()
    t0 = time.perf_counter()
    q = col.encoder.encode([question])
    t1 = time.perf_counter()
    allowed = col.allowed(filters)
    depth = max(depth or 4 * k, k) if (hybrid or rerank) else k
    n = min(depth, len(col) if allowed is None else len(allowed))
    cos: dict[int, float] = {}
    order: list[int] = []
    if n:
        scores, ids = index.search(col.index, q, n, allowed)
        for s, i in zip(scores[0], ids[0]):
            if i >= 0:
                cos[int(i)] = float(s)
                order.append(int(i))
    ranked = [(i, cos[i]) for i in order]
    if hybrid:
        lexical = col.bm25_search(question, depth, allowed)
        ranked = rrf([order, [i for i, _ in lexical]])[:depth]
        missing = [i for i, _ in ranked if i not in cos]
        if missing:  # BM25-only hits: their cosine, for the threshold and the display
            cos.update(zip(missing, (col.vectors(missing) @ q[0]).tolist()))
    t2 = time.perf_counter()
    seconds = {"embed": t1 - t0, "search": t2 - t1}
    hits = col.chunks([i for i, _ in ranked])
    by_id = dict(ranked)
    for h in hits:
        h.score, h.rank_score = cos.get(h.id, 0.0), by_id[h.id]
    if rerank:
        hits = do_rerank(rerank, question, hits, col.registry)
        seconds["rerank"] = time.perf_counter() - t2
    return Retrieval(hits[:k], seconds, hybrid, rerank)
