"""The HTTP app: ONE route table (every route, its scope and its wire format), the checks every
call goes through, and error bodies in the caller's dialect.

Ollama's and OpenAI's routes are translators (``compat/``) over the native handlers
(``native.py``), as Ollama itself puts its OpenAI layer in front of its own routes
(ollama server/routes.go ``GenerateRoutes``, middleware/openai.go).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from ..errors import FormatError, InvalidOptions, ModelfileError, ModelNotFound, OficinaError, RegistryError
from ..report import reporter, set_reporter
from ..ui import routes as ui_routes
from . import rag_routes
from .auth import PUBLIC, Denied, Key, Policy
from .compat import ollama, openai
from .native import BadRequest, Server
from .operate import metrics_route
from .remote import UpstreamError
from .scheduler import Busy
from .structured import SchemaError

MAX_BODY = 8 * 1024 * 1024      # a request body larger than this is refused (400), not parsed
log = logging.getLogger("oficina.serve")


@dataclass
class Call:
    """What a handler gets: the request, the server state and the key that authorised it."""

    request: Request
    server: Server
    key: Key | None

    async def json(self) -> dict[str, Any]:
        return await read_json(self.request)

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    scope: str           # public | read | inference | admin (auth.SCOPES)
    dialect: Any         # the compat module whose error body this route answers with


# The one route table. Anything not listed here does not exist; everything listed is checked
# against its scope before its handler runs.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/", ollama.root, PUBLIC, ollama),
    Route("HEAD", "/", ollama.root, PUBLIC, ollama),
    Route("GET", "/api/version", ollama.version, PUBLIC, ollama),
    Route("POST", "/api/generate", ollama.generate, "inference", ollama),
    Route("POST", "/api/chat", ollama.chat, "inference", ollama),
    Route("POST", "/api/embed", ollama.embed, "inference", ollama),
    Route("POST", "/api/embeddings", ollama.embeddings, "inference", ollama),
    Route("POST", "/api/rag/ask", rag_routes.ask, "inference", ollama),
    Route("GET", "/api/tags", ollama.tags, "read", ollama),
    Route("POST", "/api/show", ollama.show, "read", ollama),
    Route("GET", "/api/ps", ollama.ps, "read", ollama),
    Route("POST", "/api/pull", ollama.pull, "admin", ollama),
    Route("POST", "/api/create", ollama.create, "admin", ollama),
    Route("POST", "/api/copy", ollama.copy, "admin", ollama),
    Route("DELETE", "/api/delete", ollama.delete, "admin", ollama),
    Route("POST", "/v1/chat/completions", openai.chat_completions, "inference", openai),
    Route("POST", "/v1/completions", openai.completions, "inference", openai),
    Route("POST", "/v1/embeddings", openai.embeddings, "inference", openai),
    Route("GET", "/v1/models", openai.models, "read", openai),
    Route("GET", "/v1/models/{model:path}", openai.model, "read", openai),
    Route("GET", "/metrics", metrics_route, "read", openai),   # errors in the structured (OpenAI) shape
)


def _ui(handler):
    """The web UI's handlers (``ui/routes.py``) take the request itself."""
    async def run(call: Call) -> Response:
        return await handler(call.request)
    return run


ROUTES += tuple(Route(r.method, r.path, _ui(r.handler), r.scope, ollama) for r in ui_routes.ROUTES)


# Exceptions -> HTTP status. Anything not here is a bug: 500 with no detail.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (ModelNotFound, 404), (Busy, 503), (UpstreamError, 502), (BadRequest, 400), (SchemaError, 400),
    (InvalidOptions, 400), (FormatError, 400), (ModelfileError, 400), (RegistryError, 400),
    (OficinaError, 400),
)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, Denied):
        return exc.status
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 500)


def error_response(route_dialect, exc: BaseException) -> Response:
    status = status_of(exc)
    message = str(exc) if status != 500 else "internal error"
    if status == 500:
        log.exception("internal error", exc_info=exc)
    headers = {}
    retry = getattr(exc, "retry_after", None)
    if retry:
        headers["Retry-After"] = str(retry)
    return JSONResponse(route_dialect.error_body(status, message), status_code=status, headers=headers)


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object: at most ``MAX_BODY`` bytes of UTF-8, or one clear 400."""
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > MAX_BODY:
        raise BadRequest(f"request body is larger than {MAX_BODY // (1024 * 1024)} MiB")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY:
            raise BadRequest(f"request body is larger than {MAX_BODY // (1024 * 1024)} MiB")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request body is not valid UTF-8") from None
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    return value


def _endpoint(route: Route, server: Server, policy: Policy):
    async def endpoint(request: Request) -> Response:
        set_reporter(reporter().child())  # this request's own: each request runs in its own task
        try:
            policy.check_host(request.headers.get("host"))
            client = request.client.host if request.client else "?"
            key = policy.authorize(route.scope, request.headers.get("authorization"), client)
            return await route.handler(Call(request, server, key))
        except Exception as e:  # every failure gets the dialect's error body, never a traceback
            return error_response(route.dialect, e)

    endpoint.__name__ = f"{route.method.lower()}_{route.path.strip('/').replace('/', '_') or 'root'}"
    return endpoint


def create_app(server: Server, policy: Policy | None = None, operations=None) -> FastAPI:
    """``operations``: an ``operate.Operations`` (cache, metrics, cost, log) to install."""
    policy = policy or Policy()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = asyncio.create_task(server.pool.run_reaper())
        try:
            yield
        finally:
            reaper.cancel()
            await server.pool.close()
            ops = getattr(app.state, "operations", None)
            if ops is not None:
                ops.close()

    app = FastAPI(title="oficina", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    for route in ROUTES:
        app.add_api_route(route.path, _endpoint(route, server, policy), methods=[route.method],
                          include_in_schema=False)
    if policy.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(policy.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])
    app.state.server = server
    app.state.policy = policy
    if operations is not None:
        operations.install(server, app)
    return app
