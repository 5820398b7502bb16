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
