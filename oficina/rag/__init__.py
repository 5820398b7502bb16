"""Retrieval-augmented generation: ingest -> chunk -> embed -> index (FAISS + SQLite) ->
retrieve -> answer with checked citations, and measure it.

The Python API, the same functions the CLI calls (a server route calls ``ask``)::

    from oficina import rag
    rag.create("glass", embed="minilm")
    rag.ingest("glass", ["oficina/data/rag/docs"])
    a = rag.ask("glass", "Who founded the Ardel workshop?", model="smollm2")
    a.answer, a.citations, a.sources, a.timings
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..generation.session import load
from ..registry.registry import Registry
from . import bound, collection  # noqa: F401  (bound registers the binder of models bound to a collection)
from .answer import IDK, THRESHOLD, Answer, Source, build_messages, check_citations
from .answer import ask as do_ask
from .collection import CollectionConfig, IngestReport, list_collections
from .retrieve import Collection, Filters, Hit, Retrieval, retrieve

__all__ = [
    "IDK",
    "THRESHOLD",
    "Answer",
    "Collection",
    "CollectionConfig",
    "Filters",
    "Hit",
    "IngestReport",
    "Retrieval",
    "Source",
    "ask",
    "build_messages",
    "check_citations",
    "create",
    "ingest",
    "list_collections",
    "open",
    "search",
]

_open = open


def create(name: str, embed: str = "minilm", chunk_tokens: int = 200, overlap: int = 40,
           index: str = "auto", registry: Registry | None = None):
    return collection.create(name, CollectionConfig(embed, chunk_tokens, overlap, index), registry)


def ingest(name: str, paths: list[str | Path], prune: bool = False, registry: Registry | None = None,
           **kw) -> IngestReport:
    return collection.ingest(name, paths, prune=prune, registry=registry, **kw)


def open(name: str, registry: Registry | None = None, version: int | None = None) -> Collection:
    return Collection(name, registry, version)


def search(collection: str | Collection, question: str, k: int = 4, **kw) -> Retrieval:
    col = collection if isinstance(collection, Collection) else Collection(collection)
    return retrieve(col, question, k, **kw)


def ask(collection: str | Collection, question: str, model: Any = None, k: int = 4,
        registry: Registry | None = None, **kw) -> Answer:
    """Answer ``question`` from the collection with ``model`` (a name or a loaded Model; None:
    retrieve only). Returns the answer, its checked citations, the sources and per-stage
    seconds."""
    col = collection if isinstance(collection, Collection) else Collection(collection, registry)
    if isinstance(model, str):
        model = load(model, registry=col.registry)
    return do_ask(col, question, model, k, **kw)
