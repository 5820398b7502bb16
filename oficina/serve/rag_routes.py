"""``POST /api/rag/ask``: answer a question from a collection (oficina/rag) on the server.

The body: ``question``, ``collection`` (NAME or NAME@VERSION), ``model``, and optionally ``k``
(4), ``hybrid`` (false), ``threshold`` (rag.THRESHOLD), ``options`` (sampling, as /api/chat),
``keep_alive``, ``stream`` (true, like /api/generate). Retrieval and the prompt are the ones
``oficina rag ask`` uses (``rag.answer.prepare``); the generation goes through the native
handler and its scheduler like any /api/chat request (guards, metrics, the conversation log
included). Streamed: NDJSON lines ``{"model", "created_at", "response", "done": false}``, then one
with ``"done": true`` carrying the checked ``answer``, ``citations``, ``attributed``,
``removed_citations``, ``idk``, ``sources`` and ``timings``. Not streamed: that last object only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response

from ..errors import OficinaError
from ..rag import answer as A
from ..rag.bound import bind, open_collection
from ..rag.retrieve import Collection
from .compat import field
from .compat.ollama import _first, _metrics, _now, ndjson
from .native import BadRequest, Delta, GenerateRequest, Result, generate


def bind_request(server, req: GenerateRequest, opts) -> tuple[GenerateRequest, str | None]:
    """A request to a model bound to a collection (``opts.rag``) -> the request with the RAG
    messages (a /api/generate prompt becomes the question), and IDK when the model is not to
    be asked."""
    msgs = req.messages if req.messages is not None else \
        [{"role": "user", "content": req.prompt or ""}]
    if req.raw:
        raise BadRequest("a model bound to a collection cannot take a raw prompt")
    try:
        p = bind(server.pool.home, opts.rag, msgs)
    except OficinaError as e:
        raise BadRequest(str(e)) from None
    new = dataclasses.replace(req, messages=p.messages, prompt=None, system=None)
    return new, (A.IDK if p.below_threshold else None)


async def answer_events(server, col: Collection, model: str, question: str, k: int = 4,
                        hybrid: bool = False, threshold: float = A.THRESHOLD,
                        options: dict | None = None, keep_alive: Any = None, key_id=None,
                        route: str = "/api/rag/ask") -> AsyncIterator[Delta | Result | A.Answer]:
    """Deltas and the generation's Result as /api/chat gives them, then the checked Answer."""
    p = await asyncio.to_thread(A.prepare, col, question, k, hybrid, None, None, threshold)
    if p.below_threshold:
        yield A.finish(p, A.IDK)
        return
    # rag=[]: the collection is already in the messages, even when the model is bound to one
    req = GenerateRequest(model=model, messages=p.messages,
                          options={**A.DEFAULTS, **(options or {}), "rag": []},
                          keep_alive=keep_alive, route=route, key_id=key_id)
    t0 = time.perf_counter()
    text = ""
    events = generate(server, req)
    try:
        async for ev in events:
            yield ev
            if isinstance(ev, Result):
                text = ev.text
    finally:
        await events.aclose()
    p.timings["generate"] = time.perf_counter() - t0
    yield A.finish(p, text)


def _done(a: A.Answer, result: Result | None, model: str, collection_name: str) -> dict:
    d = {"model": model, "collection": collection_name, "created_at": _now(), "response": "",
         "done": True, **{k: v for k, v in a.to_dict().items() if k != "messages"}}
    if result is not None:
        d.update(_metrics(result))
    return d


async def ask(call) -> Response:
    body = await call.json()
    question = field(body, "question", str, "")
    ref = field(body, "collection", str, "")
    model = field(body, "model", str, "")
    if not question.strip() or not ref or not model:
        raise BadRequest("question, collection and model are required")
    k = field(body, "k", int, 4)
    if k < 1:
        raise BadRequest("k must be at least 1")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    col = await asyncio.to_thread(open_collection, call.server.pool.home, ref)
    events = answer_events(call.server, col, model, question, k, field(body, "hybrid", bool, False),
                           field(body, "threshold", float, A.THRESHOLD), options,
                           body.get("keep_alive"), call.key_id)
    name = f"{col.name}@{col.entry.version}"
    if not field(body, "stream", bool, True):
        result = None
        async for ev in events:
            if isinstance(ev, Result):
                result = ev
            elif isinstance(ev, A.Answer):
                return JSONResponse(_done(ev, result, model, name))
    first = await _first(events)
    seen: dict[str, Result] = {}

    def objects(ev) -> list[dict]:
        if isinstance(ev, Delta) and ev.text:
            return [{"model": model, "created_at": _now(), "response": ev.text, "done": False}]
        if isinstance(ev, Result):
            seen["result"] = ev
        elif isinstance(ev, A.Answer):
            idk = [{"model": model, "created_at": _now(), "response": ev.answer, "done": False}]
            # below the threshold the model was not asked: the answer is the one line
            return (idk if ev.below_threshold else []) + [_done(ev, seen.get("result"), model, name)]
        return []

    return ndjson(first, events, objects)
