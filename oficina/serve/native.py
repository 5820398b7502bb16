"""The native handlers: what the server does, independent of any wire format.

``compat/ollama.py`` and ``compat/openai.py`` parse their JSON into a ``GenerateRequest``, call
``generate`` (or ``embed``, ``models``...), and shape the events they get back. Nothing here knows
about HTTP. Two seams for the layers on top (issue "Operate"):

- ``Server.before``: callables ``(request, prompt_ids, options, served) -> Result | None`` asked
  before a generation is queued; the first non-None result is the answer (a response cache); its
  ``pieces`` are streamed as they were first streamed.
- ``Server.observers``: callables ``(Record) -> None`` told about every finished request (metrics,
  cost, the conversation log). They run on the event loop and must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import OficinaError
from ..generation.decoding import Decoding
from ..options import Options
from ..rag.embed import DTYPES, Encoder
from .extras import guard_input, guard_reason, library_prompt, output_guard
from .pool import Pool, Served
from .remote import stream
from .request import BadRequest, Delta, GenerateRequest, Record, Result
from .scheduler import Failed, Job, Piece
from .sequence import Finished, Sequence
from .structured import GrammarProcessor, Grammars
from .tools import forced_tool_schema, parse_tool_calls

__all__ = ["NS", "BadRequest", "Delta", "GenerateRequest", "Record", "Result", "Server", "collect", "embed",
           "forced_tool_schema", "generate", "parse_tool_calls", "prompt_ids"]

NS = 1_000_000_000


@dataclass
class Server:
    pool: Pool
    request_timeout: float | None = 600.0
    observers: list[Callable[[Record], None]] = field(default_factory=list)
    before: list[Callable[..., Result | None]] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def notify(self, record: Record) -> None:
        for observer in self.observers:
            try:
                observer(record)
            except Exception:  # an observer's fault must not fail the request it watches
                pass


# -- prompts ------------------------------------------------------------------------------------

ROLES = ("system", "user", "assistant", "tool")


def _messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list):
        raise BadRequest("messages must be a list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}]: role must be one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}]: content must be text")
        msg = {"role": m["role"], "content": content}
        if m.get("tool_calls"):
            msg["tool_calls"] = m["tool_calls"]
        if m.get("images"):
            msg["images"] = m["images"]
        out.append(msg)
    return out


def prompt_ids(served: Served, req: GenerateRequest) -> list[int]:
    model = served.model
    if req.images or any(m.get("images") for m in req.messages or []):
        raise BadRequest(f"model {served.name!r} does not accept images (it has no vision encoder)")
    if req.messages is not None:
        msgs = _messages(req.messages)
        if req.system and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": req.system})
        return _render(model, msgs, req)
    if not isinstance(req.prompt, str):
        raise BadRequest("prompt must be text")
    if req.raw or not (req.template or model.chat_template):
        return model.encode(req.prompt, special=True)
    msgs = ([{"role": "system", "content": req.system}] if req.system else []) + \
        [{"role": "user", "content": req.prompt}]
    return _render(model, msgs, req)


def _render(model, msgs: list[dict], req: GenerateRequest) -> list[int]:
    # the one prompt builder (formats.prompt), with the request's template over the model's
    return model.encode_chat(msgs, tools=req.tools, template=req.template)


# -- generation ---------------------------------------------------------------------------------

def _grammars(served: Served) -> Grammars:
    g = getattr(served, "grammars", None)
    if g is None:
        runner = served.scheduler.runner
        g = served.grammars = Grammars(served.model.tokenizer, runner.vocab_size, runner.eos_ids)
    return g


async def generate(server: Server, req: GenerateRequest) -> AsyncIterator[Delta | Result]:
    """Stream ``Delta`` pieces, then one ``Result``. Raises ``OficinaError`` (bad request, unknown
    model, busy) before the first piece, so translators can still answer with an error status."""
    t0 = time.monotonic()
    pool = server.pool
    loaded_before = _is_loaded(pool, req.model)
    served = await pool.get(req.model, req.keep_alive)
    try:
        load_seconds = 0.0 if loaded_before else time.monotonic() - t0
        if not served.generates and not served.remote:
            raise BadRequest(f"model {served.name!r} is an {served.model.info.kind} model; it can embed, not generate")
        params: dict[str, Any] = {}
        if req.prompt_name:  # the library prompt's text, its parameters under the request's options
            req, params = await asyncio.to_thread(library_prompt, server.pool.home, req)
        try:
            opts = served.model.options.merged({**params, **(req.options or {})})
        except OficinaError as e:
            raise BadRequest(str(e)) from None
        if opts.rag:  # a model bound to a collection: the question goes through it (oficina/rag)
            from .rag_routes import bind_request  # (it imports this module)

            req, idk = await asyncio.to_thread(bind_request, server, req, opts)
            if idk is not None:  # nothing retrieved is close enough: the model is not asked
                yield Delta(idk)
                yield Result(served.name, idk, "stop", 0, 0, load_seconds,
                             total_seconds=time.monotonic() - t0)
                return
        if opts.guard:  # guards (oficina/safety) on the user's text before anything is decoded
            req, verdict = await asyncio.to_thread(guard_input, req, opts)
            if verdict is not None:
                result = Result(served.name, "", guard_reason(verdict), 0, 0, load_seconds,
                                total_seconds=time.monotonic() - t0)
                server.notify(_record(req, served, opts, result))
                yield result
                return
            if served.remote:
                raise BadRequest("guards on a remote model's answers are not supported yet; "
                                 "drop the guard option or guard the upstream")
        # a remote model's upstream renders its own prompt: there are no ids here
        ids = None if served.remote else await asyncio.to_thread(prompt_ids, served, req)
        for hook in server.before:
            hit = hook(req, ids, opts, served)
            if hit is not None:
                for piece in hit.pieces or [hit.text]:
                    yield Delta(piece)
                hit.cached = True
                hit.total_seconds = time.monotonic() - t0
                server.notify(_record(req, served, opts, hit))
                yield hit
                return
        # aclosing: a client that goes away closes this generator, and with it the inner one at
        # once (its finally frees the scheduler slot), not whenever it is garbage collected
        inner = (_generate_remote(server, served, req, opts, t0) if served.remote else
                 _generate_local(server, served, req, opts, ids, load_seconds, t0))
        async with contextlib.aclosing(inner) as events:
            async for ev in events:
                yield ev
    finally:
        pool.release(served)


async def _generate_local(server: Server, served: Served, req: GenerateRequest, opts: Options,
                          ids: list[int], load_seconds: float, t0: float) -> AsyncIterator[Delta | Result]:
    """A loaded model's answer: one job on its scheduler (continuous batching), the grammar of
    ``format`` compiled off the event loop, guards on the answer as it streams."""
    compiled = None
    if req.format is not None:
        compiled = await asyncio.to_thread(_grammars(served).compile, req.format)
    model = served.model
    keep = model._keep(ids)

    def make(r) -> Sequence:
        processor = GrammarProcessor(compiled, r.vocab_size) if compiled is not None else None
        return Sequence(Decoding(opts, model.tokenizer, r.eos_ids, ids, r.context_length, keep,
                                 processor=processor))

    loop = asyncio.get_running_loop()
    timeout = server.request_timeout
    job = Job(make, loop, asyncio.Queue(), deadline=time.monotonic() + timeout if timeout else None)
    served.scheduler.submit(job)
    pieces: list[str] = []
    guarded = output_guard(opts)
    try:
        while True:
            item = await job.out.get()
            if isinstance(item, Piece):
                text, verdict = guarded.feed(item.text) if guarded and item.text else (item.text, None)
                if verdict is not None:  # a block ends the stream; the offending text never leaves
                    result = Result(served.name, "".join(pieces), guard_reason(verdict), len(ids),
                                    len(pieces), load_seconds, total_seconds=time.monotonic() - t0)
                    result.pieces = pieces
                    server.notify(_record(req, served, opts, result))
                    yield result
                    return
                if text:
                    pieces.append(text)
                    yield Delta(text)
            elif isinstance(item, Failed):
                raise item.error
            elif isinstance(item, Finished):
                tail, verdict = item.tail, None
                if guarded:
                    held, verdict = guarded.feed(tail) if tail else ("", None)
                    if verdict is None:
                        rest, verdict = guarded.finish()
                        held += rest
                    tail = "" if verdict is not None else held
                if tail:
                    pieces.append(tail)
                    yield Delta(tail)
                result = _result(served, item, load_seconds, time.monotonic() - t0, req)
                if guarded:  # the client saw the guarded text, not the raw one
                    result.text = "".join(pieces)
                    if verdict is not None:
                        result.done_reason, result.tool_calls = guard_reason(verdict), []
                result.pieces, result.token_times = pieces, item.token_times
                server.notify(_record(req, served, opts, result))
                yield result
                return
    finally:
        job.cancel()              # no-op when finished; frees the slot on disconnect
        served.scheduler.wake()


async def _generate_remote(server: Server, served: Served, req: GenerateRequest, opts: Options,
                           t0: float) -> AsyncIterator[Delta | Result]:
    """A remote model's answer (``remote.py``): the upstream's stream as the same events."""
    pieces: list[str] = []
    async for kind, value in stream(served.model, req, opts):
        if kind == "text":
            pieces.append(value)
            yield Delta(value)
            continue
        total = time.monotonic() - t0
        text = "".join(pieces)
        calls = value["tool_calls"]
        if not calls:
            text, calls = parse_tool_calls(text, req.tools)
        result = Result(served.name, text, value["finish"], value["prompt_tokens"], value["eval_tokens"],
                        prompt_seconds=value["ttft"], eval_seconds=total - value["ttft"],
                        ttft_seconds=value["ttft"], total_seconds=total, tool_calls=calls, seed=opts.seed,
                        pieces=pieces, token_times=value["times"])
        server.notify(_record(req, served, opts, result))
        yield result


def _is_loaded(pool: Pool, name: str) -> bool:
    return any(name in (s.name, s.name.removesuffix(":latest")) for s in pool.loaded.values())


def _result(served: Served, f: Finished, load_s: float, total_s: float, req: GenerateRequest) -> Result:
    s = f.stats
    text, calls = parse_tool_calls(f.text, req.tools)
    return Result(served.name, text, s.done_reason, s.prompt_tokens, s.eval_tokens, load_s,
                  f.queue_seconds, s.prompt_seconds, s.eval_seconds, f.ttft_seconds, total_s,
                  s.truncated, calls, f.seed, reused_tokens=s.reused_tokens)


def _record(req: GenerateRequest, served: Served, opts: Options, result: Result) -> Record:
    return Record(uuid.uuid4().hex, req.route, served.name, served.digest, req.key_id,
                  opts.to_dict(changed_only=True),
                  req.messages if req.messages is not None else req.prompt, result, req)


async def collect(events: AsyncIterator[Delta | Result]) -> Result:
    """The final result of a non-streamed generation (its text is the whole answer)."""
    result = None
    async for ev in events:
        if isinstance(ev, Result):
            result = ev
    assert result is not None
    return result


# -- embeddings ---------------------------------------------------------------------------------

@dataclass
class Embeddings:
    model: str
    vectors: list[list[float]]
    prompt_tokens: int
    load_seconds: float
    total_seconds: float


async def embed(server: Server, model: str, inputs: list[str], truncate: bool = True,
                normalize: bool = True, keep_alive: Any = None, options: dict | None = None) -> Embeddings:
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        raise BadRequest("input must be text or a list of texts")
    t0 = time.monotonic()
    loaded_before = _is_loaded(server.pool, model)
    served = await server.pool.get(model, keep_alive)
    try:
        load_s = 0.0 if loaded_before else time.monotonic() - t0
        vectors, count = await asyncio.to_thread(_embed_sync, served, inputs, truncate, normalize)
    finally:
        server.pool.release(served)
    return Embeddings(served.name, vectors, count, load_s, time.monotonic() - t0)


def _embed_sync(served: Served, inputs: list[str], truncate: bool, normalize: bool):
    """Through the RAG encoder (``rag/embed.py``): batched, the model's own pooling and window,
    the same vectors as ``oficina embed`` and a collection's index."""
    with served.lock:
        dtype = next(served.model.torch_model.parameters()).dtype  # as loaded: no copy, no cast
        enc = Encoder(served.model, next((k for k, v in DTYPES.items() if v == dtype), "fp32"))
        counts = [len(enc.tokenizer(t)["input_ids"]) for t in inputs]  # special tokens included
        if not truncate and any(c > enc.info.window for c in counts):
            raise BadRequest(f"input has {max(counts)} tokens, more than the model's window of "
                             f"{enc.info.window}; send truncate=true to cut it")
        vectors = enc.encode(inputs, unit=normalize)
    return vectors.tolist(), sum(min(c, enc.info.window) for c in counts)
