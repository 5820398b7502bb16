"""Remote models: a registry entry whose answers come from an OpenAI-compatible upstream (vLLM or
TGI on a GPU fleet, llama.cpp's server, another ``oficina serve``).

Created from a Modelfile ``FROM openai://host:port/model`` (``openais://`` for https); the
manifest holds no weights, only the upstream's address and model name, so PARAMETER, SYSTEM and
MESSAGE lines layer on top as for any model. The server routes such a model's requests here and
keeps everything of its own around them: the same routes and translators, response cache,
metrics, cost, conversation log and keys.

The backend works at the handler level (text in, text out), not as a ``Runner``: an upstream
samples its own tokens, so there is nothing to batch or prefill here. It streams the upstream's
server-sent events with httpx and yields the same ``Delta``/``Result`` events as a local model.

Faults: an upstream that cannot be reached is a 502 with one line; after ``FAILURES`` such
failures in a row its circuit breaker opens, and requests fail at once (no connect timeout each)
for ``COOLDOWN`` seconds, doubling up to ``MAX_COOLDOWN`` while it stays down; then one request is
let through to try it (half-open), and a success closes the breaker again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import OficinaError
from ..options import Options

# where a remote model comes from (a Modelfile's FROM openai://...) is the registry's to say
from ..registry.sources import parse_source  # noqa: F401

FAILURES = 3          # consecutive unreachable answers that open the breaker
COOLDOWN = 5.0        # seconds the breaker stays open the first time
MAX_COOLDOWN = 60.0
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 600.0  # between two chunks of a stream: a long prompt on a busy upstream is slow


class UpstreamError(OficinaError):
    """The upstream could not be reached or failed (HTTP 502)."""

    status = 502


# -- the breaker ----------------------------------------------------------------------------------
@dataclass
class Breaker:
    failures: int = 0
    opened_at: float | None = None
    cooldown: float = field(default_factory=lambda: COOLDOWN)   # read when the breaker is made
    trial: bool = False               # a half-open trial request is in flight
    lock: threading.Lock = field(default_factory=threading.Lock)

    def before(self, url: str) -> None:
        with self.lock:
            if self.opened_at is None:
                return
            wait = self.opened_at + self.cooldown - time.monotonic()
            if wait > 0 or self.trial:
                raise UpstreamError(f"upstream {url} is unreachable (circuit open; retry in {max(wait, 0.1):.0f}s)")
            self.trial = True         # half-open: this request tries it

    def success(self) -> None:
        with self.lock:
            self.failures, self.opened_at, self.cooldown, self.trial = 0, None, COOLDOWN, False

    def failure(self) -> None:
        with self.lock:
            self.failures += 1
            if self.trial:            # the trial failed: stay open, longer
                self.cooldown = min(self.cooldown * 2, MAX_COOLDOWN)
                self.opened_at, self.trial = time.monotonic(), False
            elif self.failures >= FAILURES:
                self.opened_at = time.monotonic()

    @property
    def state(self) -> str:
        return "closed" if self.opened_at is None else ("half-open" if self.trial else "open")


_breakers: dict[str, Breaker] = {}
_breakers_lock = threading.Lock()


def breaker(url: str) -> Breaker:
    with _breakers_lock:
        return _breakers.setdefault(url, Breaker())


# -- the model ------------------------------------------------------------------------------------
@dataclass
class RemoteModel:
    """What the pool holds for a remote entry (in place of a loaded ``api.Model``)."""

    name: str
    base_url: str
    upstream_model: str
    options: Options                   # the entry's PARAMETERs
    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    api_key: str | None = None         # sent as a bearer token (from OFICINA_REMOTE_KEY)

    @classmethod
    def from_entry(cls, entry) -> RemoteModel:
        import os

        m = entry.manifest
        return cls(entry.name, m.details["remote"], m.details["upstream_model"], Options.from_mapping(m.params),
                   m.system, list(m.messages), os.environ.get("OFICINA_REMOTE_KEY"))


def _body(rm: RemoteModel, req, opts: Options) -> tuple[str, dict]:
    """The upstream request (path, JSON) for a native ``GenerateRequest``."""
    o = opts.to_dict(changed_only=True)
    body: dict[str, Any] = {"model": rm.upstream_model, "stream": True, "stream_options": {"include_usage": True}}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                         ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"),
                         # vLLM's extra sampling parameters (protocol.py), ignored by servers without them
                         ("top_k", "top_k"), ("min_p", "min_p"), ("repeat_penalty", "repetition_penalty")):
        if ours in o:
            body[theirs] = o[ours]
    if opts.num_predict > 0:
        body["max_tokens"] = opts.num_predict
    if opts.stop:
        body["stop"] = list(opts.stop)
    if req.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(req.format, dict):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": req.format}}
    if req.images or any(m.get("images") for m in req.messages or []):
        raise OficinaError(f"model {rm.name!r} is remote; images are not forwarded")
    if req.messages is None and req.raw:
        body["prompt"] = req.prompt
        return "/completions", body
    system = req.system or rm.system
    if req.messages is not None:
        msgs = [_wire_message(m) for m in req.messages]
    else:
        msgs = [{"role": "user", "content": req.prompt or ""}]
    msgs = [dict(m) for m in rm.messages] + msgs
    if system and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    body["messages"] = msgs
    if req.tools:
        body["tools"] = req.tools
    return "/chat/completions", body


def _wire_message(m: dict) -> dict:
    out = {"role": m.get("role"), "content": m.get("content", "")}
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                              "function": {"name": c["function"]["name"],
                                           "arguments": json.dumps(c["function"].get("arguments", {}))}}
                             for i, c in enumerate(m["tool_calls"])]
    return out


FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}


async def stream(rm: RemoteModel, req, opts: Options) -> AsyncIterator[tuple[str, Any]]:
    """``("text", str)`` pieces, then one ``("done", dict)`` with finish reason, usage, tool calls
    and timings. Raises ``UpstreamError`` (502) when the upstream cannot be reached or fails, and
    ``OficinaError`` (400) when it refuses the request as bad."""
    path, body = _body(rm, req, opts)
    url = rm.base_url + path
    b = breaker(rm.base_url)
    b.before(rm.base_url)
    headers = {"Authorization": f"Bearer {rm.api_key}"} if rm.api_key else {}
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    t0 = time.monotonic()
    finish, usage, calls, times = "stop", {}, {}, []
    try:
        async with httpx.AsyncClient(timeout=timeout) as client, \
                client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code >= 400:
                detail = _error_message(await r.aread())
                if r.status_code >= 500:
                    raise UpstreamError(f"upstream {rm.base_url} failed ({r.status_code}): {detail}")
                b.success()       # it answered: reachable, the request was the problem
                raise OficinaError(f"upstream {rm.base_url} refused the request ({r.status_code}): {detail}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise UpstreamError(f"upstream {rm.base_url} sent a line that is not JSON") from None
                if isinstance(chunk.get("error"), (dict, str)):
                    raise UpstreamError(f"upstream {rm.base_url}: {_error_message(json.dumps(chunk).encode())}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                    for c in (choice.get("delta") or {}).get("tool_calls") or []:
                        slot = calls.setdefault(c.get("index", 0), {"name": "", "arguments": ""})
                        fn = c.get("function") or {}
                        slot["name"] += fn.get("name") or ""
                        slot["arguments"] += fn.get("arguments") or ""
                    if text:
                        times.append(time.monotonic())
                        yield "text", text
                    if choice.get("finish_reason"):
                        finish = FINISH.get(choice["finish_reason"], "stop")
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
            httpx.ReadTimeout, httpx.WriteError, httpx.PoolTimeout) as e:
        b.failure()
        raise UpstreamError(f"upstream {rm.base_url} is unreachable ({type(e).__name__})") from None
    except UpstreamError:
        b.failure()
        raise
    b.success()
    tool_calls = []
    for _, c in sorted(calls.items()):
        try:
            args = json.loads(c["arguments"]) if c["arguments"] else {}
        except ValueError:
            args = {}
        tool_calls.append({"function": {"name": c["name"], "arguments": args}})
    yield "done", {"finish": finish, "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                   "eval_tokens": int(usage.get("completion_tokens") or len(times)),
                   "ttft": (times[0] - t0) if times else time.monotonic() - t0, "times": times,
                   "truncated": None, "tool_calls": tool_calls}


def _error_message(raw: bytes) -> str:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip().splitlines()[0][:200] if raw.strip() else "no detail"
    err = value.get("error") if isinstance(value, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    return str(err or value)[:200]
