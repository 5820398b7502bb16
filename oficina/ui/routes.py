"""The routes the web UI needs beyond Ollama's API, as rows the server's route table registers
(method, path, handler, scope), the way ``serve`` registers its own.

- ``GET /ui`` and its static files, with a strict Content-Security-Policy: no inline script,
  nothing from another origin, so model text that reaches the page can never run.
- ``GET /api/options``: the Options table (names, types, defaults, ranges, help), so a parameter
  added to ``oficina/options.py`` shows up as a control without UI code.
- ``POST /api/inspect/{tokenize,predict,attention,similarity,weights}``: the functions behind
  ``oficina tokenize``/``predict``/... (``oficina.inspect``), same numbers as the CLI.
- ``GET /api/ui/models``, ``/api/ui/lineage``, ``POST /api/ui/rollback``: the registry's versions,
  parents, producers and metrics; rollback is admin scope.
- ``GET /api/ui/runs``: training runs and their loss history from the run folders.

Every state-changing call also passes ``same_origin``: a browser on another site cannot post
here with the user's cookies or network position (CSRF, DNS rebinding to a page).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from ..errors import ModelNotFound, OficinaError
from ..options import PARAMS
from . import STATIC

# 'self' only; no 'unsafe-inline' anywhere. Styles set through the CSSOM (el.style.width) are
# allowed by style-src 'self'; style attributes in markup are not, and the pages write none.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".ico": "image/x-icon"}
MAX_TEXT = 20_000  # characters; the inspect views are for sentences, not books


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[Request], Awaitable[Response]]
    scope: str  # "public" | "read" | "inference" | "admin", the server's key scopes


class BadRequest(OficinaError):
    """A request body the UI routes cannot use."""


# -- models for the inspect routes -----------------------------------------------------------------
# The server can hand in its own loader (its scheduler's loaded models); standalone, a small LRU of
# oficina.api.load results, one lock per model because torch modules are not re-entrant for
# set_attn_implementation (attention) while another request runs a forward pass.

_loader: Callable[[str], Any] | None = None
_cache: "OrderedDict[str, tuple[Any, threading.Lock]]" = OrderedDict()
_cache_lock = threading.Lock()
KEEP_MODELS = 2


def set_loader(load: Callable[[str], Any] | None) -> None:
    """Use ``load(name) -> oficina.api.Model`` for the inspect routes (None: the built-in cache)."""
    global _loader
    _loader = load


def _model(name: str):
    if _loader is not None:
        return _loader(name), threading.Lock()
    from ..api import load, resolve
    from ..registry.registry import Registry

    entry = resolve(name, Registry(), auto_pull=False)
    key = entry.digest
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    model = load(entry.ref)
    with _cache_lock:
        _cache[key] = (model, threading.Lock())
        while len(_cache) > KEEP_MODELS:
            _cache.popitem(last=False)
        return _cache[key]


# -- request helpers -------------------------------------------------------------------------------

def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, headers=SECURITY_HEADERS)


def same_origin(request: Request) -> str | None:
    """Why a state-changing request is refused, or None. Browsers send ``Origin`` on every
    cross-origin POST and ``Sec-Fetch-Site`` on all requests; a non-browser client sends
    neither and is judged by its API key alone."""
    site = request.headers.get("sec-fetch-site")
    if site and site not in ("same-origin", "none"):
        return f"cross-site request refused ({site})"
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            return "cross-origin request refused"
    elif origin == "null":
        return "cross-origin request refused"
    return None


async def _body(request: Request) -> dict:
    try:
        data = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _text(data: dict, key: str = "text") -> str:
    text = data.get(key)
    if not isinstance(text, str) or not text:
        raise BadRequest(f"{key!r} must be non-empty text")
    if len(text) > MAX_TEXT:
        raise BadRequest(f"{key!r} is {len(text)} characters; the limit here is {MAX_TEXT}")
    return text


def _int(data: dict, key: str, default: int | None) -> int | None:
    v = data.get(key, default)
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise BadRequest(f"{key!r} must be an integer, got {v!r}")


def _name(data: dict) -> str:
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("'model' must name a model")
    return name


def handler(fn: Callable[..., Any], state_changing: bool = False, blocking: bool = True):
    """An endpoint from ``fn(data) -> dict`` (``data`` the JSON body, or the query for GET):
    one-line errors with the status they deserve, heavy work off the event loop."""
    async def endpoint(request: Request) -> Response:
        if state_changing and (why := same_origin(request)):
            return _error(403, why)
        try:
            data = dict(request.query_params) if request.method == "GET" else await _body(request)
            out = await run_in_threadpool(fn, data) if blocking else fn(data)
        except ModelNotFound as e:
            return _error(404, str(e))
        except OficinaError as e:
            return _error(400, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return _json(out)
    endpoint.__name__ = fn.__name__
    return endpoint


# -- static files ------------------------------------------------------------------------------------

async def index(request: Request) -> Response:
    if not request.url.path.endswith("/"):
        return RedirectResponse("/ui/", status_code=308)
    return FileResponse(STATIC / "index.html", headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
                        media_type=TYPES[".html"])


async def static(request: Request) -> Response:
    rel = request.path_params.get("path", "")
    root = STATIC.resolve()
    path = (root / rel).resolve()
    # Only files under static/, of the kinds we ship: no traversal, no directory listings.
    if root not in path.parents or not path.is_file() or path.suffix not in TYPES:
        return _error(404, "not found")
    return FileResponse(path, media_type=TYPES[path.suffix],
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


# -- the Options table -------------------------------------------------------------------------------

def options_table(_: dict) -> dict:
    rows = []
    for p in PARAMS:
        lo, hi = getattr(p.valid, "lo", None), getattr(p.valid, "hi", None)
        row = {"name": p.name, "type": {int: "int", float: "float", list: "list"}.get(p.type, "text"),
               "default": list(p.default) if p.type is list else p.default, "min": lo, "max": hi,
               "min_exclusive": bool(getattr(p.valid, "lo_open", False)), "valid": p.valid_text,
               "help": p.help, "typical": list(p.typical) if p.typical else None}
        rows.append(row)
    from ..inspect.predict import SAMPLING_PARAMS

    return {"options": rows, "sampling": list(SAMPLING_PARAMS)}


# -- look inside -------------------------------------------------------------------------------------

def _inspect(data: dict, job: Callable[[Any], Any]):
    model, lock = _model(_name(data))
    with lock:
        return job(model)


def tokenize(data: dict) -> dict:
    from .. import inspect

    text = _text(data)
    return _inspect(data, lambda m: inspect.tokenize(m, text).to_dict())


def predict(data: dict) -> dict:
    from .. import inspect

    text, top = _text(data), _int(data, "top", 12)
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object of parameter names")
    if not 1 <= top <= 100:
        raise BadRequest("'top' must be between 1 and 100")
    return _inspect(data, lambda m: inspect.predict(m, text, top=top, **options).to_dict())


def attention(data: dict) -> dict:
    from .. import inspect

    text, layer = _text(data), _int(data, "layer", -1)
    head = data.get("head", "mean")
    if head != "mean" and not (isinstance(head, int) and not isinstance(head, bool)):
        raise BadRequest("'head' must be a head index or \"mean\"")

    def job(m):
        a = inspect.attention(m, text, layer=layer)
        return a.to_dict(None if head == "mean" else head)
    return _inspect(data, job)


def similarity(data: dict) -> dict:
    """Cosine similarity of every pair of texts: ``inspect.embed`` once per text, then the same
    cosine ``inspect.similarity`` takes."""
    import torch

    from .. import inspect

    texts = data.get("texts")
    if not isinstance(texts, list) or not 2 <= len(texts) <= 12:
        raise BadRequest("'texts' must be a list of 2 to 12 texts")
    texts = [_text({"text": t}) for t in texts]
    pooling = data.get("pooling")

    def job(m):
        vecs = [inspect.embed(m, t, pooling).sentence.double() for t in texts]
        x = torch.nn.functional.normalize(torch.stack(vecs), dim=1)
        e = inspect.embed(m, texts[0], pooling)
        return {"texts": texts, "matrix": (x @ x.T).clamp(-1, 1).tolist(), "pooling": e.pooling,
                "embedding_length": e.embedding_length}
    return _inspect(data, job)


def weights(data: dict) -> dict:
    from .. import inspect

    tensor = data.get("tensor") or None
    bins = _int(data, "bins", 60)
    layer = _int(data, "layer", None)
    if not 5 <= bins <= 400:
        raise BadRequest("'bins' must be between 5 and 400")

    def job(m):
        w = inspect.weights(m, layer=layer, tensor=tensor, bins=bins)
        d = w.to_dict()
        d["rows"] = [{**r, "stored": r["stored"]} for r in w.tree()]
        d.pop("params")
        return d
    return _inspect(data, job)


# -- registry: models, versions, lineage --------------------------------------------------------------

def _registry():
    from ..registry.registry import Registry

    return Registry()  # one per call: a SQLite connection belongs to its thread


def _version(e, head: int | None = None) -> dict:
    return {"ref": e.ref, "name": e.name, "version": e.version, "digest": e.digest,
            "parent": e.parent, "created": e.created, "producer": e.producer,
            "metrics": e.metrics, "format": e.manifest.format,
            "details": e.manifest.details, "adapters": [a.path for a in e.manifest.adapters],
            "current": head == e.version if head is not None else None}


def models(_: dict) -> dict:
    reg = _registry()
    out = []
    for e in reg.list():
        versions, head = reg.history(e.name)
        out.append({**_version(e, head), "versions": len(versions),
                    "size": sum(f.size for f in e.manifest.files)})
    return {"models": out}


def lineage(data: dict) -> dict:
    """Every version connected to ``name`` through parent links, across names (a LoRA of
    smollm2 is its own name whose parent is smollm2@1): nodes and parent -> child edges."""
    from ..registry.names import parse_ref

    reg = _registry()
    target = parse_ref(_text(data, "name")).name
    reg.history(target)  # 404 when unknown
    nodes: dict[str, dict] = {}
    for e in reg.list():
        versions, head = reg.history(e.name)
        for v in versions:
            nodes[v.ref] = _version(v, head)
    children: dict[str, list[str]] = {}
    for ref, n in nodes.items():
        if n["parent"]:
            children.setdefault(n["parent"], []).append(ref)
    seen, todo = set(), [r for r, n in nodes.items() if n["name"] == target]
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        parent = nodes.get(ref, {}).get("parent")
        todo += children.get(ref, []) + ([parent] if parent else [])
    keep = [nodes[r] if r in nodes else {"ref": r, "name": r.rpartition("@")[0], "missing": True}
            for r in sorted(seen, key=lambda r: nodes.get(r, {}).get("created", 0))]
    edges = [[n["parent"], n["ref"]] for n in keep if n.get("parent") in seen]
    return {"name": target, "nodes": keep, "edges": edges}


def card(data: dict) -> dict:
    """What ``oficina show --json`` prints: the architecture numbers of the current version."""
    from ..api import resolve
    from ..models.info import describe
    from ..options import Options

    reg = _registry()
    entry = resolve(_text(data, "name"), reg, auto_pull=False)
    info = describe(reg.snapshot(entry), entry.manifest.format)
    d = info.to_dict()
    d.update(name=entry.name, version=entry.version, digest=entry.digest,
             options=Options.from_mapping(entry.manifest.params).to_dict(),
             model_options=entry.manifest.params, system=entry.manifest.system,
             adapters=[a.path for a in entry.manifest.adapters])
    return d


def rollback(data: dict) -> dict:
    reg = _registry()
    e = reg.rollback(_text(data, "name"), _int(data, "version", None))
    return {"status": "success", "current": e.ref}


# -- runs ----------------------------------------------------------------------------------------------

def runs(_: dict) -> dict:
    """Training runs under ``$OFICINA_HOME/runs``: the loss history the loop saves with each
    checkpoint (``checkpoints/step-*/state.json``), newest run first."""
    from ..tuning import checkpoint

    root = _registry().home / "runs"
    out = []
    for d in sorted(root.iterdir() if root.is_dir() else (), key=_mtime, reverse=True):
        if not d.is_dir():
            continue
        state: dict = {}
        last = checkpoint.latest(d)
        if last is not None:
            try:
                state = json.loads((last / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
        out.append({"name": d.name, "modified": _mtime(d), "step": state.get("step"),
                    "total_steps": state.get("total_steps"), "epoch": state.get("epoch"),
                    "tokens": state.get("tokens"), "seconds": state.get("seconds"),
                    "history": state.get("history", []), "val_history": state.get("val_history", [])})
    return {"runs": out}


def _mtime(p: Path) -> float:
    try:
        return max([p.stat().st_mtime] + [c.stat().st_mtime for c in p.glob("checkpoints/*")])
    except OSError:
        return 0.0


def evaluations(_: dict) -> dict:
    """Every version with metrics (``oficina eval`` records them on the version): the same
    side-by-side shape as its table, one row per version."""
    reg = _registry()
    rows = []
    for e in reg.list():
        for v in reg.history(e.name)[0]:
            if v.metrics:
                rows.append({"ref": v.ref, "metrics": v.metrics})
    return {"rows": rows}


ROUTES: tuple[Route, ...] = (
    Route("GET", "/ui", index, "public"),
    Route("GET", "/ui/", index, "public"),
    Route("GET", "/ui/{path:path}", static, "public"),
    Route("GET", "/api/options", handler(options_table, blocking=False), "read"),
    Route("POST", "/api/inspect/tokenize", handler(tokenize, True), "inference"),
    Route("POST", "/api/inspect/predict", handler(predict, True), "inference"),
    Route("POST", "/api/inspect/attention", handler(attention, True), "inference"),
    Route("POST", "/api/inspect/similarity", handler(similarity, True), "inference"),
    Route("POST", "/api/inspect/weights", handler(weights, True), "inference"),
    Route("GET", "/api/ui/models", handler(models), "read"),
    Route("GET", "/api/ui/lineage", handler(lineage), "read"),
    Route("GET", "/api/ui/card", handler(card), "read"),
    Route("GET", "/api/ui/runs", handler(runs), "read"),
    Route("GET", "/api/ui/evaluations", handler(evaluations), "read"),
    Route("POST", "/api/ui/rollback", handler(rollback, True), "admin"),
)


def router():
    """A FastAPI router with ``ROUTES``, for an app that does not enforce scopes itself."""
    from fastapi import APIRouter

    r = APIRouter()
    for route in ROUTES:
        r.add_api_route(route.path, route.handler, methods=[route.method], include_in_schema=False)
    return r
