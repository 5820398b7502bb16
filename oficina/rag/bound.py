"""A model bound to a collection (``PARAMETER rag NAME`` in its Modelfile, or the ``rag`` option
of one request) answers every question through it: the last user message is retrieved for, and
the model sees the same prompt ``oficina rag ask`` builds (numbered, nonce-delimited documents,
focused on the sentences nearest the question) after the conversation's earlier turns. When
nothing retrieved is close enough (``THRESHOLD``), the answer is ``IDK`` and the model is not
asked. ``oficina run`` (``Model.chat_stream``) and the server (``serve/native.generate``) both
call ``bind``.

Opened collections (store, index, encoder) are kept per registry version, so a second question
does not reload the encoder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import OficinaError
from ..generation.session import register_binder
from ..registry.registry import Registry
from .answer import IDK, Prepared, prepare
from .collection import find
from .retrieve import Collection

__all__ = ["IDK", "bind", "open_collection"]

K = 4  # chunks retrieved for a bound model's question (as `oficina rag ask`)
HYBRID = True  # BM25 fused with the vectors: recall@4 0.988 vs 0.950 on the shipped set (docs/rag.md)
KEEP = 4  # collections kept open per process
_OPEN: OrderedDict[tuple[str, str], Collection] = OrderedDict()
_LOCK = threading.Lock()


def _split(ref: str) -> tuple[str, int | None]:
    name, _, version = ref.partition("@")
    if version and not version.isdigit():
        raise OficinaError(f"collection {ref!r}: the version after @ must be a number")
    return name, int(version) if version else None


def check_ref(registry: Registry, refs: tuple[str, ...] | list[str]) -> None:
    """Refuse now (at ``oficina create``) what would fail at the first question."""
    name, version = _split(the_collection(refs))
    find(name, registry, version)


def open_collection(home: Path | str | None, ref: str) -> Collection:
    """``NAME`` or ``NAME@VERSION`` in the registry at ``home``, opened once per version."""
    name, version = _split(ref)
    reg = Registry(home)
    entry = find(name, reg, version)
    key = (str(reg.home), entry.digest)
    with _LOCK:
        if key in _OPEN:
            _OPEN.move_to_end(key)
            return _OPEN[key]
    col = Collection(name, reg, entry.version)
    _ = col.encoder  # loaded now: the registry's SQLite connection is only usable in this thread
    with _LOCK:
        _OPEN[key] = col
        while len(_OPEN) > KEEP:
            _OPEN.popitem(last=False)
    return col


def the_collection(refs: tuple[str, ...] | list[str]) -> str:
    if len(refs) != 1:
        raise OficinaError(f"a model answers from one collection; rag names {len(refs)}: "
                           f"{', '.join(refs)}")
    return refs[0]


def bind(home: Path | str | None, refs: tuple[str, ...] | list[str],
         messages: list[dict]) -> Prepared:
    """Retrieve for the last user message; ``Prepared.messages`` is the chat to generate from:
    the RAG system message, earlier user/assistant turns, then documents + question
    (``below_threshold``: answer ``IDK`` without asking the model)."""
    col = open_collection(home, the_collection(refs))
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None or not str(messages[last].get("content") or "").strip():
        raise OficinaError(f"a model bound to collection {col.name} needs a question "
                           f"(a user message)")
    p = prepare(col, str(messages[last]["content"]), K, HYBRID)
    history = [m for m in messages[:last] if m.get("role") in ("user", "assistant")]
    p.messages = p.messages[:1] + history + p.messages[1:]
    return p


register_binder(bind)  # Model.chat_stream answers a bound model through it
