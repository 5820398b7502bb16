"""What every UI route shares: the route row, security headers, the same-origin check for
state-changing calls, and turning a plain function of the request's JSON into an endpoint with
one-line errors."""

from __future__ import annotations

import inspect as _inspect
import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import ModelNotFound, OficinaError

# 'self' only; no 'unsafe-inline' anywhere. Styles set through the CSSOM (el.style.width) are
# allowed by style-src 'self'; style attributes in markup are not, and the pages write none.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin"}
MAX_TEXT = 20_000  # characters; the inspect views are for sentences, not books


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[Request], Awaitable[Response]]
    scope: str  # "public" | "read" | "inference" | "admin", the server's key scopes


class BadRequest(OficinaError):
    """A request body the UI routes cannot use."""


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def same_origin(request: Request) -> str | None:
    """Why a state-changing request is refused, or None. Browsers send ``Origin`` on every
    cross-origin POST and ``Sec-Fetch-Site`` on all requests; a non-browser client sends
    neither and is judged by its API key alone."""
    site = request.headers.get("sec-fetch-site")
    if site and site not in ("same-origin", "none"):
        return f"cross-site request refused ({site})"
    origin = request.headers.get("origin")
    if origin == "null":
        return "cross-origin request refused"
    if origin and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        return "cross-origin request refused"
    return None


async def body(request: Request) -> dict:
    try:
        data = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def text(data: dict, key: str = "text") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key!r} must be non-empty text")
    if len(value) > MAX_TEXT:
        raise BadRequest(f"{key!r} is {len(value)} characters; the limit here is {MAX_TEXT}")
    return value


def integer(data: dict, key: str, default: int | None) -> int | None:
    v = data.get(key, default)
    if isinstance(v, str) and v.lstrip("-").isdigit():  # from a query string
        return int(v)
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise BadRequest(f"{key!r} must be an integer, got {v!r}")


def handler(fn: Callable[..., Any], state_changing: bool = False, blocking: bool = True):
    """An endpoint from ``fn(data)`` or ``fn(data, app_state)`` returning JSON-able data (``data``:
    the JSON body, or the query for GET): one-line errors with the status they deserve, heavy
    work off the event loop."""
    wants_state = len(_inspect.signature(fn).parameters) > 1

    async def endpoint(request: Request) -> Response:
        if state_changing and (why := same_origin(request)):
            return error(403, why)
        try:
            data = dict(request.query_params) if request.method == "GET" else await body(request)
            args = (data, request.app.state) if wants_state else (data,)
            out = await run_in_threadpool(fn, *args) if blocking else fn(*args)
        except ModelNotFound as e:
            return error(404, str(e))
        except OficinaError as e:
            return error(400, str(e).splitlines()[0] if str(e) else type(e).__name__)
        if isinstance(out, Response):
            out.headers.update(SECURITY_HEADERS)
            return out
        return JSONResponse(out, headers=SECURITY_HEADERS)
    endpoint.__name__ = fn.__name__
    return endpoint
