"""Ollama's API (docs/api.md in github.com/ollama/ollama) translated to the native handlers.

Streams are NDJSON, one object per line; the last line has ``done: true`` and the timings in
nanoseconds, as Ollama's ``api.Metrics``. ``options`` go through the one ``Options`` table.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ... import __version__
from ...create import create as do_create
from ...create import to_modelfile
from ...errors import ModelNotFound, OficinaError
from ...modelfile import Modelfile, parse
from ...options import Options
from ...registry.sources import pull as do_pull
from ...registry.sources import resolve
from .. import native
from ..native import NS, BadRequest, Delta, GenerateRequest, Result
from . import field, unless_disconnected


def error_body(status: int, message: str) -> dict:
    return {"error": message}


def _now(t: float | None = None) -> str:
    return datetime.fromtimestamp(t or time.time(), timezone.utc).isoformat().replace("+00:00", "Z")


def _request(body: dict, call, route: str) -> GenerateRequest:
    fmt = body.get("format")
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        if fmt == "":
            fmt = None
        else:
            raise BadRequest('format must be "json" or a JSON schema object')
    return GenerateRequest(
        model=field(body, "model", str, ""),
        prompt=field(body, "prompt", str, ""),
        messages=field(body, "messages", list),
        system=field(body, "system", str),
        template=field(body, "template", str),
        raw=field(body, "raw", bool, False),
        images=field(body, "images", list),
        options=field(body, "options", dict, {}),
        format=fmt,
        keep_alive=field(body, "keep_alive", (str, int, float)),
        tools=field(body, "tools", list),
        route=route,
        key_id=call.key_id,
        prompt_name=field(body, "prompt_name", str),   # oficina: a prompt of the library
        variables=field(body, "variables", dict),
    )


def _metrics(r: Result) -> dict:
    out = {
        "done_reason": r.done_reason,
        "total_duration": int(r.total_seconds * NS),
        "load_duration": int(r.load_seconds * NS),
        "prompt_eval_count": r.prompt_tokens,
        "prompt_eval_duration": int(r.prompt_seconds * NS),
        "eval_count": r.eval_tokens,
        "eval_duration": int(r.eval_seconds * NS),
    }
    if r.truncated:
        out["truncated"] = r.truncated
    if r.cost is not None:
        out["cost"] = r.cost          # from the price table (operate.py); not an Ollama field
    return out


async def _answer(call, req: GenerateRequest, stream: bool, shape) -> Response:
    """Run ``req`` and answer with NDJSON lines (``shape(text, result)`` makes each object) or
    one object. Errors before the first line become an error status; later ones an error line."""
    events = native.generate(call.server, req)
    if not stream:
        result = await unless_disconnected(call.request, native.collect(events))
        return JSONResponse(shape(result.text, result))
    first = await _first(events)
    return ndjson(first, events, lambda ev: [shape(ev.text if isinstance(ev, Delta) else "",
                                                   ev if isinstance(ev, Result) else None)])


def ndjson(first, events, objects: Callable[[Any], list[dict]]) -> StreamingResponse:
    """NDJSON lines: ``objects(event)`` (zero or more JSON objects) for ``first`` and every event
    after it. An error after the first line is an error line; the events are always closed."""

    async def lines() -> AsyncIterator[bytes]:
        try:
            ev = first
            while ev is not None:
                for obj in objects(ev):
                    yield (json.dumps(obj) + "\n").encode()
                ev = await anext(events, None)
        except OficinaError as e:
            yield (json.dumps({"error": str(e)}) + "\n").encode()
        finally:
            await events.aclose()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _first(events):
    """The first event, so that a bad request or a full queue is still an HTTP error status."""
    try:
        return await anext(events)
    except BaseException:
        await events.aclose()
        raise


async def generate(call) -> Response:
    body = await call.json()
    req = _request(body, call, "/api/generate")
    req.messages = None
    stream = field(body, "stream", bool, True)
    if not req.model:
        raise BadRequest("model is required")
    if not req.prompt and not body.get("prompt") and not req.prompt_name:
        # Ollama: an empty prompt loads the model (and keep_alive 0 unloads it).
        served = await call.server.pool.get(req.model, req.keep_alive)
        call.server.pool.release(served)
        return JSONResponse({"model": req.model, "created_at": _now(), "response": "", "done": True,
                             "done_reason": "unload" if served.keep_alive == 0 else "load"})

    def shape(text: str, r: Result | None) -> dict:
        d = {"model": req.model, "created_at": _now(), "response": text, "done": r is not None}
        if r is not None:
            d.update(_metrics(r))
        return d

    return await _answer(call, req, stream, shape)


async def chat(call) -> Response:
    body = await call.json()
    req = _request(body, call, "/api/chat")
    req.prompt = None
    stream = field(body, "stream", bool, True)
    if not req.model:
        raise BadRequest("model is required")
    if req.messages is None:
        req.messages = []

    def shape(text: str, r: Result | None) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if r is not None and r.tool_calls:
            message["tool_calls"] = r.tool_calls
            if stream:
                message["content"] = ""
        d = {"model": req.model, "created_at": _now(), "message": message, "done": r is not None}
        if r is not None:
            d.update(_metrics(r))
        return d

    return await _answer(call, req, stream, shape)


async def embed(call) -> Response:
    body = await call.json()
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    e = await native.embed(call.server, field(body, "model", str, ""), inputs if inputs is not None else [],
                           truncate=field(body, "truncate", bool, True), normalize=True,
                           keep_alive=field(body, "keep_alive", (str, int, float)))
    return JSONResponse({"model": e.model, "embeddings": e.vectors, "total_duration": int(e.total_seconds * NS),
                         "load_duration": int(e.load_seconds * NS), "prompt_eval_count": e.prompt_tokens})


async def embeddings(call) -> Response:
    """The older single-text route: ``prompt`` in, one unnormalised ``embedding`` out."""
    body = await call.json()
    e = await native.embed(call.server, field(body, "model", str, ""), [field(body, "prompt", str, "")],
                           normalize=False, keep_alive=field(body, "keep_alive", (str, int, float)))
    return JSONResponse({"embedding": e.vectors[0]})


# -- models -------------------------------------------------------------------------------------

async def root(call) -> Response:
    return PlainTextResponse("oficina is running")


async def version(call) -> Response:
    return JSONResponse({"version": __version__})


def _details(entry) -> dict:
    d = entry.manifest.details
    params = d.get("parameters")
    size = f"{params / 1e9:.1f}B" if params and params >= 1e9 else f"{params / 1e6:.0f}M" if params else ""
    return {"parent_model": entry.parent or "", "format": entry.manifest.format, "family": d.get("family", ""),
            "families": [d["family"]] if d.get("family") else None, "parameter_size": size,
            "quantization_level": str(d.get("quantization", ""))}


def _model_row(entry) -> dict:
    return {"name": entry.name, "model": entry.name, "modified_at": _now(entry.created),
            "size": entry.manifest.size, "digest": entry.digest.removeprefix("sha256:"),
            "details": _details(entry)}


async def tags(call) -> Response:
    entries = await asyncio.to_thread(lambda: call.server.pool.registry().list())
    return JSONResponse({"models": [_model_row(e) for e in entries]})


async def show(call) -> Response:
    body = await call.json()
    name = field(body, "model", str) or field(body, "name", str, "")

    def work():
        reg = call.server.pool.registry()
        entry = resolve(name, reg, auto_pull=False)
        m = entry.manifest
        params = "\n".join(f"{k:<20} {json.dumps(v) if k == 'stop' else v}"
                           for k, v in Options.from_mapping(m.params).to_pairs())
        d = m.details
        kind = d.get("kind", "")
        caps = ["completion"] if kind == "decoder-only" or m.format == "remote" else ["embedding"]
        template = m.template or ""
        if "tools" in template:
            caps.append("tools")
        return {"license": "\n".join(m.license), "modelfile": to_modelfile(entry, reg), "parameters": params,
                "template": template, "system": m.system or "", "details": _details(entry),
                "model_info": {"general.architecture": d.get("architecture"),
                               "general.parameter_count": d.get("parameters")},
                "capabilities": caps, "modified_at": _now(entry.created)}

    return JSONResponse(await asyncio.to_thread(work))


async def ps(call) -> Response:
    pool = call.server.pool
    loaded = list(pool.loaded.values())
    entries = await asyncio.to_thread(lambda: [pool.registry().find(s.name) for s in loaded])
    rows = []
    for s, entry in zip(loaded, entries):
        row = _model_row(entry) if entry else {"name": s.name, "model": s.name}
        if s.keep_alive is None:
            expires = "0001-01-01T00:00:00Z"          # Ollama's zero time: kept until unloaded
        else:                                       # busy: the clock starts when it goes idle
            expires = _now(s.expires_at or time.time() + s.keep_alive)
        row.update(size=s.size, size_vram=0, expires_at=expires,
                   running=s.scheduler.running if s.scheduler else s.active,
                   waiting=s.scheduler.waiting if s.scheduler else 0)
        rows.append(row)
    return JSONResponse({"models": rows})


async def pull(call) -> Response:
    body = await call.json()
    name = field(body, "model", str) or field(body, "name", str, "")
    local = name.startswith((".", "/", "~")) or name.endswith(".gguf") or ("/" in name and not name.startswith("hf://"))
    if not name or local:
        raise BadRequest("pull over HTTP takes a catalogue name or hf://org/name, not a path on the server")

    def work():
        return do_pull(call.server.pool.registry(), name)

    entry = await asyncio.to_thread(work)
    status = {"status": "success", "digest": entry.digest}
    if field(body, "stream", bool, True):
        lines = [{"status": "pulling manifest"}, {"status": "verifying sha256 digest"}, status]
        return StreamingResponse(iter([(json.dumps(x) + "\n").encode() for x in lines]),
                                 media_type="application/x-ndjson")
    return JSONResponse(status)


async def create(call) -> Response:
    """A Modelfile as text (``modelfile``) or as fields (``from``, ``system``, ``template``,
    ``parameters``, ``messages``, ``license``). FROM must be a registry model: files on the
    server's disk are not reachable over HTTP."""
    body = await call.json()
    name = field(body, "model", str) or field(body, "name", str, "")
    if not name:
        raise BadRequest("model is required")
    text = field(body, "modelfile", str)
    if text is not None:
        mf = parse(text)
    else:
        params = field(body, "parameters", dict, {})
        msgs = field(body, "messages", list, [])
        lic = field(body, "license", (str, list))
        mf = Modelfile(from_=field(body, "from", str), system=field(body, "system", str),
                       template=field(body, "template", str),
                       parameters=Options.from_mapping(params).to_pairs() if params else [],
                       messages=[(m.get("role"), m.get("content")) for m in msgs if isinstance(m, dict)],
                       license=[lic] if isinstance(lic, str) else list(lic or []))
    if not mf.from_:
        raise BadRequest("from is required (a registry model)")
    if mf.adapters or mf.from_.startswith(("/", ".", "~")) or mf.from_.endswith(".gguf"):
        raise BadRequest("FROM and ADAPTER over HTTP must name registry models, not files on the server")

    def work():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "Modelfile"
            path.write_text(mf.to_text())
            return do_create(call.server.pool.registry(), name, path, quantize=field(body, "quantize", str))

    entry = await asyncio.to_thread(work)
    status = {"status": "success", "digest": entry.digest}
    if field(body, "stream", bool, True):
        return StreamingResponse(iter([(json.dumps(status) + "\n").encode()]), media_type="application/x-ndjson")
    return JSONResponse(status)


async def copy(call) -> Response:
    body = await call.json()
    src, dst = field(body, "source", str, ""), field(body, "destination", str, "")
    if not src or not dst:
        raise BadRequest("source and destination are required")
    await asyncio.to_thread(lambda: call.server.pool.registry().copy(src, dst))
    return Response(status_code=200)


async def delete(call) -> Response:
    body = await call.json()
    name = field(body, "model", str) or field(body, "name", str, "")
    if not name:
        raise BadRequest("model is required")

    def work():
        reg = call.server.pool.registry()
        if reg.find(name) is None:
            raise ModelNotFound(f"model {name!r} not found")
        return reg.remove(name)

    await asyncio.to_thread(work)
    for s in list(call.server.pool.loaded.values()):
        if s.name in (name, f"{name}:latest") and s.active == 0:
            await call.server.pool.unload(s.name)
    return Response(status_code=200)
