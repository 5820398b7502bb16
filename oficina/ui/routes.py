"""The routes the web UI needs beyond Ollama's API, as rows (method, path, handler, scope) that
the server's one route table takes in (``serve/app.py``):

- ``GET /ui`` and its static files, with a strict Content-Security-Policy: no inline script,
  nothing from another origin, so model text that reaches the page can never run.
- ``GET /api/options``: the Options table (names, types, defaults, ranges, help), so a parameter
  added to ``oficina/options.py`` shows up as a control without UI code.
- ``POST /api/inspect/*`` (``inspect_routes``), ``/api/ui/models|lineage|card|rollback|runs|
  evaluations`` (``registry_routes``), ``/api/ui/logs*`` and ``/api/ui/stats`` (``log_routes``),
  ``/api/ui/arena*`` (``arena``).

Handlers take the starlette ``Request``; every state-changing one also refuses other origins.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from ..errors import OficinaError
from ..inspect.predict import SAMPLING_PARAMS
from ..options import PARAMS
from ..prompts import PromptStore
from . import STATIC, arena
from . import inspect_routes as ins
from . import log_routes as logs
from . import registry_routes as reg
from .http import SECURITY_HEADERS, Route, error, handler

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
NO_CACHE = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}  # revalidate: an upgrade shows at once


async def index(request: Request) -> Response:
    # The page refers to its files by absolute paths (/ui/js/app.js), so /ui and /ui/ both work.
    return FileResponse(STATIC / "index.html", headers=NO_CACHE, media_type=TYPES[".html"])


async def static(request: Request) -> Response:
    rel = request.path_params.get("path", "")
    if not Path(rel).suffix:
        return await index(request)  # a deep link such as /ui/chat: the page routes it itself
    root = STATIC.resolve()
    path = (root / rel).resolve()
    # Only files under static/, of the kinds shipped: no traversal, no listings, no .py.
    if root not in path.parents or not path.is_file() or path.suffix not in TYPES:
        return error(404, "not found")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=NO_CACHE)


def options_table(_: dict) -> dict:
    kinds = {int: "int", float: "float", list: "list"}
    return {"sampling": list(SAMPLING_PARAMS), "options": [
        {"name": p.name, "type": kinds.get(p.type, "text"),
         "default": list(p.default) if p.type is list else p.default,
         "min": getattr(p.valid, "lo", None), "max": getattr(p.valid, "hi", None),
         "min_exclusive": bool(getattr(p.valid, "lo_open", False)), "valid": p.valid_text,
         "help": p.help, "typical": list(p.typical) if p.typical else None} for p in PARAMS]}


def prompts(_: dict) -> dict:
    """The prompt library (``oficina prompt``): each prompt's newest version, labels, variables."""
    from dataclasses import asdict


    store, out = PromptStore(), []
    for name, version, _, labels in store.names():
        spec = store.get(f"{name}@{version}").spec
        out.append({"name": name, "version": version, "labels": labels, "description": spec.description,
                    "variables": {k: asdict(v) for k, v in spec.variables.items()}})
    return {"prompts": out}


def render_prompt(data: dict) -> dict:
    """A library prompt rendered with its variables: the text the chat shows as the user's turn
    (the request then names the prompt, so the log records its version)."""
    p = PromptStore().get(str(data.get("name") or ""))
    variables = data.get("variables") or {}
    if not isinstance(variables, dict):
        raise OficinaError("variables must be an object")
    return {"ref": p.ref, "text": p.render(variables)}


ROUTES: tuple[Route, ...] = (
    Route("GET", "/ui", index, "public"),  # the page itself holds no data; it asks for a key
    Route("GET", "/ui/", index, "public"),
    Route("GET", "/ui/{path:path}", static, "public"),
    Route("GET", "/api/options", handler(options_table, blocking=False), "read"),
    Route("POST", "/api/inspect/tokenize", handler(ins.tokenize, True), "inference"),
    Route("POST", "/api/inspect/predict", handler(ins.predict, True), "inference"),
    Route("POST", "/api/inspect/attention", handler(ins.attention, True), "inference"),
    Route("POST", "/api/inspect/similarity", handler(ins.similarity, True), "inference"),
    Route("POST", "/api/inspect/weights", handler(ins.weights, True), "inference"),
    Route("GET", "/api/ui/models", handler(reg.models), "read"),
    Route("GET", "/api/ui/lineage", handler(reg.lineage), "read"),
    Route("GET", "/api/ui/card", handler(reg.card), "read"),
    Route("GET", "/api/ui/runs", handler(reg.runs), "read"),
    Route("GET", "/api/ui/evaluations", handler(reg.evaluations), "read"),
    Route("POST", "/api/ui/rollback", handler(reg.rollback, True), "admin"),
    # Everyone's prompts and answers: reviewers only.
    Route("GET", "/api/ui/logs", handler(logs.entries), "admin"),
    Route("GET", "/api/ui/logs/entry", handler(logs.entry), "admin"),
    Route("POST", "/api/ui/logs/rate", handler(logs.rate, True), "admin"),
    Route("GET", "/api/ui/logs/export", handler(logs.export), "admin"),
    Route("GET", "/api/ui/stats", handler(logs.stats), "read"),
    Route("GET", "/api/ui/prompts", handler(prompts), "read"),
    Route("POST", "/api/ui/prompts/render", handler(render_prompt, True), "inference"),
    Route("POST", "/api/ui/arena/vote", handler(arena.vote, True), "inference"),
    Route("GET", "/api/ui/arena", handler(arena.results), "read"),
    Route("GET", "/api/ui/arena/export", handler(arena.export), "admin"),  # holds people's prompts
)


def router():
    """A FastAPI router with ``ROUTES`` for an app without a scope table (no key checks)."""
    from fastapi import APIRouter

    r = APIRouter()
    for route in ROUTES:
        r.add_api_route(route.path, route.handler, methods=[route.method], include_in_schema=False)
    return r
