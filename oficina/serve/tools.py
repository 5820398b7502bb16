"""Tool calls: reading the calls a model wrote out of its answer, and the schema that forces an
answer to be one call (``tool_choice`` naming a function, or ``required``)."""

from __future__ import annotations

import json
import re

from .request import BadRequest

_TOOL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_tool_calls(text: str, tools: list[dict] | None) -> tuple[str, list[dict]]:
    """Tool calls the model wrote, as ``[{"function": {"name", "arguments"}}]``, and the text
    without them. Recognises the Hermes/Qwen ``<tool_call>{...}</tool_call>`` form and an answer
    that is just ``{"name": ..., "arguments": ...}`` (or a list of them). Names must be tools the
    request offered."""
    if not tools:
        return text, []
    names = {(t.get("function") or {}).get("name") for t in tools if isinstance(t, dict)}
    blobs = _TOOL_TAG.findall(text) or [text.strip()]
    calls = []
    for blob in blobs:
        try:
            value = json.loads(blob)
        except ValueError:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and item.get("name") in names:
                args = item.get("arguments", item.get("parameters", {}))
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        continue
                if isinstance(args, dict):
                    calls.append({"function": {"name": item["name"], "arguments": args}})
    if not calls:
        return text, []
    return _TOOL_TAG.sub("", text).strip() if "<tool_call>" in text else "", calls


def forced_tool_schema(tools: list[dict], name: str | None) -> dict:
    """A schema that makes the answer one call of ``name`` (or of any offered tool)."""
    options = []
    for t in tools:
        fn = t.get("function") or {}
        if name is None or fn.get("name") == name:
            options.append({"type": "object", "properties": {
                "name": {"const": fn.get("name")},
                "arguments": fn.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"]})
    if not options:
        raise BadRequest(f"tool_choice names {name!r}, which is not among the tools")
    return options[0] if len(options) == 1 else {"anyOf": options}
