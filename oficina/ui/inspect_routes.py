"""``POST /api/inspect/*``: the functions behind ``oficina tokenize``/``predict``/``attention``/
``similarity``/``weights`` (``oficina.inspect``), so the pages show the CLI's numbers.

Inspection loads its own copy of a model (a small LRU) rather than borrowing the server's: the
attention view switches the model to eager attention for a forward pass, which must never race a
batched decode step on the same module. The server may hand in another loader (``set_loader``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

from .. import inspect
from ..generation.session import load
from ..registry.registry import Registry
from ..registry.sources import resolve
from .http import BadRequest, integer, text

_loader: Callable[[str], Any] | None = None
_cache: "OrderedDict[str, tuple[Any, threading.Lock]]" = OrderedDict()
_cache_lock = threading.Lock()
KEEP_MODELS = 2


def set_loader(load: Callable[[str], Any] | None) -> None:
    """Use ``load(name) -> oficina.api.Model`` for the inspect routes (None: the built-in LRU)."""
    global _loader
    _loader = load


def _model(name: str):
    if _loader is not None:
        return _loader(name), threading.Lock()

    entry = resolve(name, Registry(), auto_pull=False)
    with _cache_lock:
        if entry.digest in _cache:
            _cache.move_to_end(entry.digest)
            return _cache[entry.digest]
    model = load(entry.ref)
    with _cache_lock:
        _cache[entry.digest] = (model, threading.Lock())
        while len(_cache) > KEEP_MODELS:
            _cache.popitem(last=False)
        return _cache[entry.digest]


def _run(data: dict, job: Callable[[Any], Any]):
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("'model' must name a model")
    model, lock = _model(name)
    with lock:  # one inspection at a time per model: torch modules are not re-entrant here
        return job(model)


def tokenize(data: dict) -> dict:
    t = text(data)
    return _run(data, lambda m: inspect.tokenize(m, t).to_dict())


def predict(data: dict) -> dict:
    t, top = text(data), integer(data, "top", 12)
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object of parameter names")
    if not 1 <= top <= 100:
        raise BadRequest("'top' must be between 1 and 100")
    return _run(data, lambda m: inspect.predict(m, t, top=top, **options).to_dict())


def attention(data: dict) -> dict:
    t, layer = text(data), integer(data, "layer", -1)
    head = data.get("head", "mean")
    if head != "mean" and not (isinstance(head, int) and not isinstance(head, bool)):
        raise BadRequest("'head' must be a head index or \"mean\"")
    return _run(data, lambda m: inspect.attention(m, t, layer=layer).to_dict(None if head == "mean" else head))


def similarity(data: dict) -> dict:
    """Cosine similarity of every pair of texts: ``inspect.embed`` once per text, then the
    cosine ``inspect.similarity`` takes, as a matrix."""
    import torch


    texts = data.get("texts")
    if not isinstance(texts, list) or not 2 <= len(texts) <= 12:
        raise BadRequest("'texts' must be a list of 2 to 12 texts")
    texts = [text({"text": t}) for t in texts]
    pooling = data.get("pooling")

    def job(m):
        embs = [inspect.embed(m, t, pooling) for t in texts]
        x = torch.nn.functional.normalize(torch.stack([e.sentence.double() for e in embs]), dim=1)
        return {"texts": texts, "matrix": (x @ x.T).clamp(-1, 1).tolist(), "pooling": embs[0].pooling,
                "embedding_length": embs[0].embedding_length}
    return _run(data, job)


def weights(data: dict) -> dict:
    tensor, bins, layer = data.get("tensor") or None, integer(data, "bins", 60), integer(data, "layer", None)
    if not 5 <= bins <= 400:
        raise BadRequest("'bins' must be between 5 and 400")

    def job(m):
        w = inspect.weights(m, layer=layer, tensor=tensor, bins=bins)
        d = w.to_dict()
        d.pop("params")
        d["rows"] = w.tree()
        return d
    return _run(data, job)
