"""Operations around the server: response cache, metrics, cost and the conversation log, wired
in through the two seams ``native.Server`` offers (``before``: may answer a request;
``observers``: told about every finished one) and one ASGI middleware for the headers.

``Operations.install(server, app)`` is all the server does to get them; each part can be off
(``--no-cache``, ``--no-log``, no price table). Per request:

1. ``lookup`` (before generation): a repeatable request whose key is in the cache is answered
   from it, streamed piece by piece as it was first streamed.
2. ``finished`` (after generation, before the client gets the last line): cost from the price
   table, metrics, one log entry, and the answer stored in the cache when repeatable.
3. The middleware adds ``X-Oficina-Cache: hit|miss|skip`` to every generation's response and
   ``X-Oficina-Cost`` to non-streamed ones (a streamed response's headers leave before its cost
   is known: its final NDJSON line carries ``cost``, and the log has it either way). A request
   refused with an error status is counted and logged as failed.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from starlette.responses import Response

from ..options import Options
from . import cache as cache_mod
from . import convlog, cost
from .cost import PriceTable
from .metrics import Metrics
from .native import GenerateRequest, Record, Result

CACHEABLE_FINISH = ("stop", "length")
FAILED_FINISH = ("error", "timeout")
# GenerateRequest fields that say how or for whom to answer, not what: left out of the cache key.
NOT_IN_KEY = ("model", "options", "keep_alive", "route", "key_id")
ERROR_BODY_LIMIT = 4096
REQUEST_TEE_LIMIT = 1024 * 1024


@dataclass
class Ticket:
    """What one HTTP request learned on its way through (read by the middleware for headers)."""

    cache: str | None = None         # hit | miss | skip (None: no generation ran)
    cost: float = 0.0
    priced: bool = False


_ticket: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("oficina_ticket", default=None)


class Operations:
    def __init__(self, home: Path | str | None = None, *, cache: bool = True,
                 cache_bytes: int = cache_mod.DEFAULT_MAX_BYTES, log: bool = True,
                 retention_days: float | None = 30.0, redact: tuple[str, ...] = (),
                 prices: PriceTable | None = None):
        self.metrics = Metrics()
        self.prices = prices
        self.currency = prices.currency if prices else "USD"
        self.cache = cache_mod.ResponseCache(cache_mod.default_path(home), cache_bytes) if cache else None
        self.log = convlog.ConvLog(convlog.default_path(home), retention_days, redact,
                                   on_drop=self.metrics.dropped, busy_ms=20) if log else None

    def describe(self) -> str:
        """One line for the server's start banner."""
        log = "off" if self.log is None else (
            f"{self.log.path}" + (f", {self.log.retention_days:g} days" if self.log.retention_days else "")
            + (f", redacting {','.join(self.log.redact)}" if self.log.redact else ""))
        cache = "off" if self.cache is None else f"on ({self.cache.max_bytes / 1e6:.0f} MB)"
        prices = f"{self.prices.path or 'given'} ({self.prices.currency})" if self.prices else "none"
        return f"log: {log}; response cache: {cache}; prices: {prices}; metrics at /metrics"

    # -- wiring ---------------------------------------------------------------------------------
    def install(self, server, app) -> None:
        server.before.append(self.lookup)
        server.observers.append(self.finished)
        self.metrics.watch(lambda: _scheduler_state(server.pool))
        app.state.operations = self
        app.add_middleware(_Headers, operations=self)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    # -- before generation: the response cache --------------------------------------------------
    def lookup(self, req: GenerateRequest, ids, opts: Options, served) -> Result | None:
        ticket = _ticket.get()
        if self.cache is None or not cache_mod.repeatable(opts):
            if ticket is not None:
                ticket.cache = "skip"
            return None
        hit = self.cache.get(self._key(req, opts, served.digest))
        self.metrics.cache_lookup(served.name, hit is not None)
        if ticket is not None:
            ticket.cache = "hit" if hit else "miss"
        if hit is None:
            return None
        f = hit.final
        return Result(served.name, f["text"], f["done_reason"], f["prompt_tokens"], f["eval_tokens"],
                      truncated=f.get("truncated"), tool_calls=f.get("tool_calls") or [], seed=f.get("seed", -1),
                      pieces=list(hit.pieces))

    @staticmethod
    def _key(req: GenerateRequest, opts: Options, digest: str) -> str:
        body = {k: v for k, v in dataclasses.asdict(req).items() if k not in NOT_IN_KEY}
        return cache_mod.key(digest, body, opts)

    # -- after generation: cost, metrics, log, cache --------------------------------------------
    def finished(self, record: Record) -> None:
        r, req = record.result, record.request
        ticket = _ticket.get()
        r.cost = self._cost(record)
        if ticket is not None and r.cost is not None:
            ticket.cost += r.cost
            ticket.priced = True
        entry = self._entry(record)
        times = r.token_times
        self.metrics.observe(entry, [b - a for a, b in itertools.pairwise(times)], self.currency)
        if not r.cached:
            self.metrics.prefix(record.model, r.prompt_tokens, r.reused_tokens)
        if self.log is not None:
            self.log.record(entry)
        if (self.cache is not None and not r.cached and req is not None and r.done_reason in CACHEABLE_FINISH):
            opts = Options.from_mapping(record.options)
            if cache_mod.repeatable(opts):
                final = {"text": r.text, "done_reason": r.done_reason, "prompt_tokens": r.prompt_tokens,
                         "eval_tokens": r.eval_tokens, "tool_calls": r.tool_calls, "truncated": r.truncated,
                         "seed": r.seed}
                self.cache.put(self._key(req, opts, record.digest), record.model, record.digest,
                               cache_mod.Cached(r.pieces or [r.text], final))

    def _cost(self, record: Record) -> float | None:
        if self.prices is None:
            return None
        r = record.result
        if r.cached:  # nothing was computed
            return 0.0 if self.prices.price(record.model) else None
        busy = max(0.0, r.total_seconds - r.queue_seconds - r.load_seconds)
        return self.prices.cost(record.model, r.prompt_tokens, r.eval_tokens, busy)

    @staticmethod
    def _entry(record: Record) -> convlog.Entry:
        r, req = record.result, record.request
        if isinstance(record.prompt, list):
            messages = [{"role": m.get("role"), "content": m.get("content", "")} for m in record.prompt
                        if isinstance(m, dict)]
            if req is not None and req.system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": req.system})
        else:
            messages = ([{"role": "system", "content": req.system}] if req is not None and req.system else []) \
                + [{"role": "user", "content": record.prompt or ""}]
        extra = {}
        if req is not None:
            extra = {k: v for k, v in (("format", req.format), ("tools", req.tools), ("template", req.template),
                                       ("raw", req.raw or None), ("prompt", req.prompt_ref)) if v is not None}
        return convlog.Entry(
            route=record.route, model=record.model, messages=messages, output=r.text, digest=record.digest,
            key_id=record.key_id or "", options=record.options, extra=extra, tool_calls=r.tool_calls,
            finish=r.done_reason, prompt_tokens=r.prompt_tokens, output_tokens=r.eval_tokens,
            queue_s=r.queue_seconds, ttft_s=r.total_seconds if r.cached else r.ttft_seconds,
            total_s=r.total_seconds, cost=r.cost, cached=r.cached, created=r.created)

    # -- refused requests -----------------------------------------------------------------------
    def refused(self, route: str, status: int, body: bytes, request_body: bytes) -> None:
        """A generation route answered with an error status: count it, and log it as failed."""
        try:
            req = json.loads(request_body) if request_body else {}
        except ValueError:
            req = {}
        req = req if isinstance(req, dict) else {}
        model = req.get("model") if isinstance(req.get("model"), str) else ""
        if model and ":" not in model:
            model += ":latest"    # as the registry names it, so stats group it with its answers
        try:
            err = json.loads(body)
            message = err.get("error") if isinstance(err, dict) else None
            message = message.get("message") if isinstance(message, dict) else message
        except ValueError:
            message = None
        self.metrics.error(route, model or "", str(status))
        if self.log is None:
            return
        messages = req.get("messages") if isinstance(req.get("messages"), list) else \
            [{"role": "user", "content": req.get("prompt")}] if isinstance(req.get("prompt"), str) else []
        messages = [m for m in messages if isinstance(m, dict)]
        self.log.record(convlog.Entry(route=route, model=model or "?", messages=messages, finish="error",
                                      error=f"{status}: {message or 'error'}"[:500]))


GENERATION_ROUTES = ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions")


class _Headers:
    """Pure ASGI middleware (no response buffering, streams pass straight through)."""

    def __init__(self, app, operations: Operations):
        self.app, self.ops = app, operations

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in GENERATION_ROUTES:
            return await self.app(scope, receive, send)
        ticket = Ticket()
        token = _ticket.set(ticket)
        seen: list[bytes] = []
        status = {"code": 200, "body": b""}

        async def tee():
            message = await receive()
            if message.get("type") == "http.request" and sum(map(len, seen)) < REQUEST_TEE_LIMIT:
                seen.append(message.get("body", b""))
            return message

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                if ticket.cache:
                    headers.append((b"x-oficina-cache", ticket.cache.encode()))
                if ticket.priced:
                    headers.append((b"x-oficina-cost", f"{ticket.cost:.8f} {self.ops.currency}".encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and status["code"] >= 400 \
                    and len(status["body"]) < ERROR_BODY_LIMIT:
                status["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, tee, send_with_headers)
        finally:
            _ticket.reset(token)
        if status["code"] >= 400:
            self.ops.refused(scope["path"], status["code"], status["body"], b"".join(seen))


def _scheduler_state(pool) -> dict[str, tuple[int, int, float]]:
    out = {}
    for s in list(pool.loaded.values()):
        if s.scheduler is None:
            continue
        slots = max(1, s.scheduler.runner.capabilities.max_batch)
        # a static cache of fixed slots (generation/runner.py): usage = live slots / slots
        out[s.name] = (s.scheduler.running, s.scheduler.waiting, s.scheduler.running / slots)
    return out


async def metrics_route(call) -> Response:
    ops = getattr(call.request.app.state, "operations", None)
    metrics = ops.metrics if ops is not None else _fallback(call)
    body, ctype = metrics.render()
    return Response(body, media_type=ctype)


def _fallback(call) -> Metrics:
    """A server started without operations still answers /metrics (scheduler state only)."""
    state = call.request.app.state
    m = getattr(state, "fallback_metrics", None)
    if m is None:
        m = state.fallback_metrics = Metrics()
        m.watch(lambda: _scheduler_state(call.server.pool))
    return m


# -- flags ----------------------------------------------------------------------------------------
def from_args(args, home: Path | str | None = None) -> Operations:
    return Operations(home, cache=not args.no_cache, cache_bytes=cache_mod.parse_size(args.cache_size),
                      log=not args.no_log, retention_days=args.log_retention or None,
                      redact=convlog.parse_redact(args.log_redact), prices=cost.load(args.prices))

