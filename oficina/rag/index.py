"""The vector index: FAISS over unit vectors, so inner product is cosine similarity.

Kinds are registered in ``KINDS``: ``flat`` (exact, the default), ``hnsw`` (graph, Malkov &
Yashunin 2016; chosen automatically above ``AUTO_HNSW`` vectors) and ``ivf`` (inverted lists
over k-means cells). Every kind is wrapped in an ID map whose ids are the store's chunk ids, so
the index and the SQLite store name chunks the same way. The index is rebuilt from the vectors
kept in the store, so changing the kind never re-embeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import OficinaError

AUTO_HNSW = 50_000  # below this, exact search is fast enough (< 10 ms at 384 dims)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


def _faiss():
    import faiss

    return faiss


def _flat(dim: int, vectors: np.ndarray):
    return _faiss().IndexFlatIP(dim)


def _hnsw(dim: int, vectors: np.ndarray):
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def _ivf(dim: int, vectors: np.ndarray):
    faiss = _faiss()
    nlist = max(1, min(int(4 * math.sqrt(len(vectors))), len(vectors) // 39 or 1))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # small collections: no "please provide more points" on stderr
    if len(vectors):
        index.train(vectors)
    index.nprobe = max(1, nlist // 8)
    return index


# kind -> (dim, training vectors) -> empty FAISS index
KINDS: dict[str, Callable[[int, np.ndarray], object]] = {"flat": _flat, "hnsw": _hnsw, "ivf": _ivf}


def choose(kind: str, n: int) -> str:
    if kind == "auto":
        return "hnsw" if n > AUTO_HNSW else "flat"
    if kind not in KINDS:
        raise OficinaError(f"unknown index kind {kind!r}; valid: auto, {', '.join(KINDS)}")
    return kind


def build(kind: str, dim: int, ids: np.ndarray, vectors: np.ndarray):
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexIDMap2(KINDS[choose(kind, len(vectors))](dim, vectors))
    if len(vectors):
        index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    return index


def kind_of(index) -> str:
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    for name, cls in (("hnsw", faiss.IndexHNSW), ("ivf", faiss.IndexIVF), ("flat", faiss.IndexFlat)):
        if isinstance(inner, cls):
            return name
    return type(inner).__name__


def save(index, path: Path) -> None:
    _faiss().write_index(index, str(path))


def load(path: Path):
    try:
        return _faiss().read_index(str(path))
    except RuntimeError as e:
        raise OficinaError(f"cannot read the index {path}: {str(e).splitlines()[0][:120]}") from None


def search(index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """(scores [q, k], ids [q, k]); id -1 where fewer than k vectors qualify. ``allowed``: only
    these chunk ids (metadata filters), through FAISS' own ID selector."""
    faiss = _faiss()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if allowed is None:
        return index.search(queries, k)
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(HNSW_EF_SEARCH, k))
    elif isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=inner.nprobe)
    else:
        params = faiss.SearchParameters(sel=sel)
    return index.search(queries, k, params=params)
