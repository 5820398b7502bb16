"""OpenAI's API (platform.openai.com/docs/api-reference) translated to the native handlers.

Streams are server-sent events ending in ``data: [DONE]``. Sampling fields map onto the one
``Options`` table (max_tokens -> num_predict, and ``num_ctx`` is accepted as an extra body field);
a prompt cut to fit the context says so in a ``truncated`` field, never silently.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from ...errors import OficinaError
from ...registry.sources import resolve
from .. import native
from ..native import BadRequest, Delta, GenerateRequest, Result, forced_tool_schema
from . import field, unless_disconnected

FINISH = {"stop": "stop", "length": "length", "timeout": "length"}
UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "audio", "prediction", "suffix", "echo", "best_of")


def error_body(status: int, message: str) -> dict:
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 429: "rate_limit_error", 503: "server_busy"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _options(body: dict) -> dict[str, Any]:
    for name in UNSUPPORTED:
        value = body.get(name)
        if value not in (None, False, 0, {}, 1 if name == "best_of" else None):
            raise BadRequest(f"{name} is not supported by this server")
    opts: dict[str, Any] = {}
    for ours, theirs, kinds in (("temperature", "temperature", float), ("top_p", "top_p", float),
                                ("frequency_penalty", "frequency_penalty", float),
                                ("presence_penalty", "presence_penalty", float), ("seed", "seed", int),
                                ("num_ctx", "num_ctx", int)):
        value = field(body, theirs, kinds)
        if value is not None:
            opts[ours] = value
    limit = field(body, "max_completion_tokens", int) or field(body, "max_tokens", int)
    if limit is not None:
        opts["num_predict"] = limit
    stop = field(body, "stop", (str, list))
    if stop:
        opts["stop"] = [stop] if isinstance(stop, str) else stop
    extra = field(body, "options", dict)       # Ollama-style options are accepted here too
    if extra:
        opts = {**extra, **opts}
    return opts


def _format(body: dict) -> str | dict | None:
    rf = field(body, "response_format", dict)
    if not rf or rf.get("type") in (None, "text"):
        return None
    if rf.get("type") == "json_object":
        return "json"
    if rf.get("type") == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON schema object")
        return spec["schema"]
    raise BadRequest(f"response_format type {rf.get('type')!r} is not supported (text, json_object, json_schema)")


def _content(m: dict, i: int) -> str:
    content = m.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") not in ("text", "image_url", "input_text"):
                raise BadRequest(f"messages[{i}].content: unsupported part {p!r:.60}")
            if p["type"] == "image_url":
                raise BadRequest("this model does not accept images (it has no vision encoder)")
            parts.append(str(p.get("text", "")))
        return "".join(parts)
    raise BadRequest(f"messages[{i}].content must be text or a list of parts")


def _messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role = "system" if m.get("role") == "developer" else m.get("role")
        msg = {"role": role, "content": _content(m, i)}
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                               "arguments": _loads(c["function"].get("arguments"))}}
                                 for c in m["tool_calls"] if isinstance(c, dict) and "function" in c]
        out.append(msg)
    return out


def _loads(value):
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _tools(body: dict) -> tuple[list | None, str | dict | None]:
    """``(tools, forced format)``: tool_choice "required" or a named function constrains the
    answer to a call (structured output); "auto" lets the model decide; "none" drops the tools."""
    tools = field(body, "tools", list)
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None, None
    if choice in (None, "auto"):
        return tools, None
    if choice == "required":
        return tools, forced_tool_schema(tools, None)
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return tools, forced_tool_schema(tools, choice["function"].get("name"))
    raise BadRequest("tool_choice must be none, auto, required or {\"type\": \"function\", ...}")


def _tool_calls(r: Result, forced: bool) -> list[dict]:
    calls = r.tool_calls
    if forced and not calls:   # a forced call's answer is the call itself, as JSON
        value = _loads(r.text)
        if isinstance(value, dict) and "name" in value:
            calls = [{"function": {"name": value["name"], "arguments": value.get("arguments", {})}}]
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])}}
            for c in calls]


def _usage(results: list[Result]) -> dict:
    p = results[0].prompt_tokens if results else 0
    c = sum(r.eval_tokens for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _truncated(results: list[Result]) -> str | None:
    return next((r.truncated for r in results if r.truncated), None)


async def _run_n(call, reqs: list[GenerateRequest]) -> AsyncIterator[tuple[int, Delta | Result]]:
    """Merge the event streams of ``n`` choices, tagged with their index. Each choice is its own
    sequence on the scheduler, so they decode in the same batch."""
    if len(reqs) == 1:
        async for ev in native.generate(call.server, reqs[0]):
            yield 0, ev
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, req: GenerateRequest) -> None:
        try:
            async for ev in native.generate(call.server, req):
                await queue.put((i, ev))
        except BaseException as e:
            await queue.put((i, e))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(reqs)]
    try:
        done = 0
        while done < len(reqs):
            i, ev = await queue.get()
            if isinstance(ev, BaseException):
                raise ev
            if isinstance(ev, Result):
                done += 1
            yield i, ev
    finally:
        for t in tasks:
            t.cancel()


def _requests(call, body: dict, route: str, chat: bool) -> tuple[list[GenerateRequest], bool]:
    model = field(body, "model", str, "")
    if not model:
        raise BadRequest("model is required")
    n = field(body, "n", int, 1)
    if not 1 <= n <= 16:
        raise BadRequest("n must be between 1 and 16")
    opts = _options(body)
    tools, forced = _tools(body) if chat else (None, None)
    fmt = forced or _format(body)
    base = GenerateRequest(model=model, options=opts, format=fmt, tools=tools, route=route, key_id=call.key_id,
                           keep_alive=body.get("keep_alive"),
                           # oficina's extra body fields: a prompt of the library and its variables
                           prompt_name=field(body, "prompt_name", str), variables=field(body, "variables", dict))
    if chat:  # with a library prompt, the conversation before it may be empty
        base.messages = [] if base.prompt_name and not body.get("messages") else _messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be text (one prompt per request)")
        base.prompt, base.raw = prompt, True
    reqs = []
    for i in range(n):
        o = dict(opts)
        if "seed" in o and n > 1:
            o["seed"] = o["seed"] + i       # n choices with one seed would be n copies
        reqs.append(GenerateRequest(**{**base.__dict__, "options": o}))
    return reqs, forced is not None


async def _respond_whole(call, reqs: list[GenerateRequest], forced, chat: bool, cid: str,
                         created: int) -> Response:
    """The non-streamed answer: every choice gathered, then one JSON object."""
    model = reqs[0].model
    obj = "chat.completion" if chat else "text_completion"
    results: dict[int, Result] = {}

    async def gather() -> None:
        async for i, ev in _run_n(call, reqs):
            if isinstance(ev, Result):
                results[i] = ev

    await unless_disconnected(call.request, gather())
    choices = []
    for i in range(len(reqs)):
        r = results[i]
        calls = _tool_calls(r, forced) if chat and reqs[i].tools else []
        finish = "tool_calls" if calls else FINISH.get(r.done_reason, "stop")
        if chat:
            msg: dict[str, Any] = {"role": "assistant", "content": None if calls and forced else r.text}
            if calls:
                msg["tool_calls"] = calls
            choices.append({"index": i, "message": msg, "finish_reason": finish, "logprobs": None})
        else:
            choices.append({"index": i, "text": r.text, "finish_reason": finish, "logprobs": None})
    out = {"id": cid, "object": obj, "created": created, "model": model, "system_fingerprint": "oficina",
           "choices": choices, "usage": _usage(list(results.values()))}
    if _truncated(list(results.values())):
        out["truncated"] = _truncated(list(results.values()))
    return JSONResponse(out)


async def _respond(call, body: dict, route: str, chat: bool) -> Response:
    reqs, forced = _requests(call, body, route, chat)
    stream = field(body, "stream", bool, False)
    cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    model = reqs[0].model
    obj = "chat.completion" if chat else "text_completion"
    if not stream:
        return await _respond_whole(call, reqs, forced, chat, cid, created)
    include_usage = bool((field(body, "stream_options", dict, {}) or {}).get("include_usage"))
    events = _run_n(call, reqs)
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise

    def chunk(choices: list, **extra) -> bytes:
        d = {"id": cid, "object": obj + ".chunk" if chat else obj, "created": created, "model": model,
             "system_fingerprint": "oficina", "choices": choices, **extra}
        return f"data: {json.dumps(d)}\n\n".encode()

    async def sse() -> AsyncIterator[bytes]:
        results: list[Result] = []
        try:
            if chat:
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                             for i in range(len(reqs))])
            ev: Any = first
            while ev is not None:
                i, e = ev
                if isinstance(e, Delta) and e.text and not forced:
                    part = {"delta": {"content": e.text}} if chat else {"text": e.text}
                    yield chunk([{"index": i, **part, "finish_reason": None, "logprobs": None}])
                elif isinstance(e, Result):
                    results.append(e)
                    calls = _tool_calls(e, forced) if chat and reqs[i].tools else []
                    finish = "tool_calls" if calls else FINISH.get(e.done_reason, "stop")
                    delta: dict[str, Any] = {}
                    if calls:
                        delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(calls)]
                    elif forced:
                        delta["content"] = e.text
                    part = {"delta": delta} if chat else {"text": ""}
                    extra = {"truncated": e.truncated} if e.truncated else {}
                    yield chunk([{"index": i, **part, "finish_reason": finish, "logprobs": None}], **extra)
                ev = await anext(events, None)
            if include_usage:
                yield chunk([], usage=_usage(results))
            yield b"data: [DONE]\n\n"
        except OficinaError as e:
            yield f"data: {json.dumps(error_body(400, str(e)))}\n\n".encode()
        finally:
            await events.aclose()

    return StreamingResponse(sse(), media_type="text/event-stream")


async def chat_completions(call) -> Response:
    return await _respond(call, await call.json(), "/v1/chat/completions", chat=True)


async def completions(call) -> Response:
    return await _respond(call, await call.json(), "/v1/completions", chat=False)


async def embeddings(call) -> Response:
    body = await call.json()
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
        raise BadRequest("input must be text or a list of texts (token arrays are not supported)")
    fmt = field(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise BadRequest("encoding_format must be float or base64")
    if body.get("dimensions") is not None:
        raise BadRequest("dimensions is not supported: the model's vectors have a fixed length")
    e = await native.embed(call.server, field(body, "model", str, ""), inputs, normalize=True)

    def encode(v: list[float]):
        # base64 of little-endian float32, what the official client decodes with numpy.
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if fmt == "base64" else v

    return JSONResponse({"object": "list", "model": e.model,
                         "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                                  for i, v in enumerate(e.vectors)],
                         "usage": {"prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens}})


def _model_obj(entry) -> dict:
    return {"id": entry.name.removesuffix(":latest"), "object": "model", "created": int(entry.created),
            "owned_by": "oficina"}


async def models(call) -> Response:
    entries = await asyncio.to_thread(lambda: call.server.pool.registry().list())
    return JSONResponse({"object": "list", "data": [_model_obj(e) for e in entries]})


async def model(call) -> Response:
    name = call.request.path_params["model"]

    def work():
        return resolve(name, call.server.pool.registry(), auto_pull=False)

    return JSONResponse(_model_obj(await asyncio.to_thread(work)))
