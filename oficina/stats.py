"""What one generation did, in Ollama's response counters: a plain record the decoding loop fills
and the session, the guards' stream filter (safety/stream.py) and the server read. It sits at the
bottom, beside ``Options``, so the guards need not import generation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    prompt_tokens: int = 0
    eval_tokens: int = 0
    prompt_seconds: float = 0.0
    eval_seconds: float = 0.0
    load_seconds: float = 0.0  # set by the session on the first call after loading (Ollama's load_duration)
    done_reason: str = ""  # "stop" (end token or stop text) | "length" (num_predict or num_ctx)
    truncated: str | None = None  # what was dropped from the prompt, when it did not fit
    tokens: list[int] = field(default_factory=list)  # the generated ids
    reused_tokens: int = 0  # prompt tokens whose KV came from a cached prefix (not prefilled)
