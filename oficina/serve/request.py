"""What the native handlers take and give, apart from how they do it (``native.py``): the
neutral request every translator builds, the events a generation streams back, the record
observers get, and the error a translator turns into a 400.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import OficinaError


class BadRequest(OficinaError):
    """The request itself is wrong (HTTP 400)."""


@dataclass
class GenerateRequest:
    model: str
    prompt: str | None = None                 # /api/generate, /v1/completions
    messages: list[dict] | None = None        # /api/chat, /v1/chat/completions
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list | None = None
    options: dict[str, Any] = field(default_factory=dict)
    format: str | dict | None = None          # "json" or a JSON schema
    keep_alive: Any = None
    tools: list[dict] | None = None
    route: str = ""
    key_id: str | None = None
    prompt_name: str | None = None            # a library prompt (oficina prompt): NAME, NAME@2, NAME:label
    variables: dict[str, Any] | None = None   # its variables
    prompt_ref: str | None = None             # the exact version used (NAME@N), for the log


@dataclass
class Result:
    """One finished generation, in neutral units (seconds; the translators convert)."""

    model: str
    text: str
    done_reason: str
    prompt_tokens: int
    eval_tokens: int
    load_seconds: float = 0.0
    queue_seconds: float = 0.0
    prompt_seconds: float = 0.0
    eval_seconds: float = 0.0
    ttft_seconds: float = 0.0
    total_seconds: float = 0.0
    truncated: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    seed: int = -1
    cached: bool = False
    created: float = field(default_factory=time.time)
    pieces: list[str] = field(default_factory=list)       # the text as streamed, chunk by chunk
    token_times: list[float] = field(default_factory=list)  # time.monotonic() at each token
    reused_tokens: int = 0            # prompt tokens whose KV came from a cached prefix
    cost: float | None = None         # set by the price table's observer (operate.py)


@dataclass
class Delta:
    text: str


@dataclass
class Record:
    """What observers get for every finished request (one per generation)."""

    id: str
    route: str
    model: str
    digest: str
    key_id: str | None
    options: dict[str, Any]
    prompt: Any                       # the prompt text or the messages
    result: Result
    request: GenerateRequest | None = None   # system, template, format, tools... (log, cache key)
