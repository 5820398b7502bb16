"""The two oficina fields a request can carry on both dialects, applied before and around a
generation: a library prompt (``prompt_name`` + ``variables``, rendered as the user's text) and
guards (``options.guard``: the user's text checked before decoding, the answer as it streams).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import OficinaError
from ..options import Options
from ..prompts import PromptStore
from ..safety.stream import GuardedStream, check_input, done_reason
from .request import BadRequest, GenerateRequest


def library_prompt(home, req: GenerateRequest) -> tuple[GenerateRequest, dict[str, Any]]:
    """Render the named prompt (``oficina/prompts``) as the user's text: the generate route's
    prompt, or the chat's last user turn. The version used is kept for the conversation log."""
    try:
        stored = PromptStore(Path(home) if home else None).get(req.prompt_name)
        text = stored.render(req.variables or {})
    except OficinaError as e:
        raise BadRequest(str(e)) from None
    if req.messages is not None:
        msgs = [*req.messages, {"role": "user", "content": text}]
        req = dataclasses.replace(req, messages=msgs, prompt_ref=stored.ref)
    else:
        if req.prompt:
            raise BadRequest("give either a prompt or a prompt_name, not both")
        req = dataclasses.replace(req, prompt=text, prompt_ref=stored.ref)
    return req, dict(stored.spec.parameters)


def guard_input(req: GenerateRequest, opts: Options):
    """The request with the user's last text checked by ``opts.guard``: (request, None) with the
    text redacted where a guard redacts, or (request, verdict) when a guard blocks it."""
    if req.messages:
        msgs = [dict(m) for m in req.messages]
        last = next((m for m in reversed(msgs) if m.get("role") == "user"), None)
        if last is None or not isinstance(last.get("content"), str):
            return req, None
        last["content"], verdict = check_input(last["content"], opts.guard)
        req = dataclasses.replace(req, messages=msgs)
    elif req.prompt:
        text, verdict = check_input(req.prompt, opts.guard)
        req = dataclasses.replace(req, prompt=text)
    else:
        return req, None
    return req, (verdict if verdict.blocked else None)


def output_guard(opts: Options):
    if not opts.guard:
        return None
    return GuardedStream(iter(()), opts.guard)


def guard_reason(verdict) -> str:
    return done_reason(verdict)
