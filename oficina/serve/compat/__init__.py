"""Wire formats in front of the native handlers: Ollama's API and OpenAI's. Each module only
translates requests into ``native`` calls and results back into its own JSON."""

from __future__ import annotations

from typing import Any

from ..native import BadRequest

_TYPE_NAMES = {str: "text", bool: "true/false", int: "an integer", float: "a number", dict: "an object",
               list: "a list"}


def field(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[name]`` if it has one of ``kinds`` (None/missing -> ``default``), else a 400 that
    names the field. Booleans are not numbers here, as in JSON."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds) or (float in kinds and isinstance(value, int))
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise BadRequest(f"{name} must be {wanted}, got {type(value).__name__}")
    return value


async def unless_disconnected(request, awaitable, every: float = 0.25):
    """Await ``awaitable`` (a whole non-streamed answer) but give up as soon as the client has
    gone: cancelling it closes the native generator, which frees the slot at the next step.
    (Streamed answers need no watcher: Starlette cancels a stream whose client went away.)"""
    import asyncio

    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise BadRequest("client disconnected")   # answered to nobody; not a crash
    finally:
        if not task.done():
            task.cancel()
