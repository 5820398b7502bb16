"""Structured output: a JSON schema (or plain "json") becomes a token mask at every step, so the
answer always parses and validates.

The grammar engine is xgrammar (Dong et al. 2024, arXiv:2411.15100): it compiles the schema to a
pushdown automaton once per request and fills a vocabulary bitmask per token in microseconds; the
mask is applied before sampling (``generation.decoding.LogitsProcessor``). Chosen over lm-format-enforcer by
measurement (``bench/bench_grammar.py``: per-token mask time on smollm2's 49k vocabulary).

xgrammar quietly ignores some JSON-Schema keywords (it logs "not supported ... ignoring"). An
ignored constraint would be a silent lie, so every keyword of the schema is checked against the
set xgrammar enforces first, and anything else is refused with the keyword's path.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from ..errors import OficinaError


class SchemaError(OficinaError):
    """The requested output format cannot be enforced (unknown keyword, bad schema)."""


# Keywords xgrammar turns into grammar rules (xgrammar json_schema_converter.cc), plus
# annotations that constrain nothing.
ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "enum",
    "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems",
    "maxItems", "format", "minProperties", "maxProperties",
}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
               "deprecated", "readOnly", "writeOnly", "strict"}
FORMATS = {"date", "time", "date-time", "duration", "email", "uuid", "uri", "uri-reference",
           "ipv4", "ipv6", "hostname"}
# Keys whose value is a map of names to schemas, or a list / a single schema.
_SCHEMA_MAPS = {"properties", "$defs", "definitions"}
_SCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_SCHEMA_ONE = {"items", "additionalProperties"}


def check_schema(schema: Any, path: str = "$") -> None:
    """Raise ``SchemaError`` naming the first keyword that would not be enforced."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"format: schema at {path} must be an object, got {type(schema).__name__}")
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            raise SchemaError(f"format: JSON-Schema keyword {key!r} at {path} cannot be enforced "
                              f"while decoding; supported: {', '.join(sorted(ENFORCED))}")
        if key == "format" and value not in FORMATS:
            raise SchemaError(f"format: string format {value!r} at {path} cannot be enforced; "
                              f"supported: {', '.join(sorted(FORMATS))}")
        if key in _SCHEMA_MAPS:
            if not isinstance(value, dict):
                raise SchemaError(f"format: {key} at {path} must be an object")
            for name, sub in value.items():
                check_schema(sub, f"{path}.{key}.{name}")
        elif key in _SCHEMA_LISTS:
            if not isinstance(value, list):
                raise SchemaError(f"format: {key} at {path} must be a list")
            for i, sub in enumerate(value):
                check_schema(sub, f"{path}.{key}[{i}]")
        elif key in _SCHEMA_ONE:
            check_schema(value, f"{path}.{key}")


class Grammars:
    """The xgrammar compiler for one loaded model (its vocabulary), built on first use."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids):
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self._compiler = None
        self.control: torch.Tensor | None = None
        self._lock = threading.Lock()

    def _get(self):
        import xgrammar as xgr

        with self._lock:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=self.eos_ids)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
                # Tokens holding a raw control character (< 0x20). Compact JSON has none outside
                # escapes, but xgrammar 0.2.9's rule for strings with minLength/maxLength
                # ([^"\\\r\n]) lets them into strings, which makes the text invalid JSON.
                stops = set(self.eos_ids)
                self.control = torch.tensor([i for i, b in enumerate(info.decoded_vocab)
                                             if i not in stops and any(c < 0x20 for c in b)], dtype=torch.long)
        return self._compiler

    def compile(self, spec: str | dict):
        """``(compiled grammar, ids to ban as well or None)`` for ``"json"`` (any JSON value) or
        a JSON schema (a dict)."""
        compiler = self._get()
        if spec == "json":
            return compiler.compile_builtin_json_grammar(), None
        if not isinstance(spec, dict):
            raise SchemaError(f"format must be \"json\" or a JSON schema object, got {spec!r:.60}")
        check_schema(spec)
        try:
            return compiler.compile_json_schema(json.dumps(spec), any_whitespace=False, strict_mode=True), self.control
        except Exception as e:  # xgrammar raises RuntimeError/ValueError with a C++ location prefix
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SchemaError(f"format: schema cannot be compiled: {message.split(': ', 1)[-1]}") from None


class GrammarProcessor:
    """``decoding.LogitsProcessor`` over one compiled grammar (one per sequence)."""

    def __init__(self, grammar, vocab_size: int):
        import xgrammar as xgr

        compiled, self.banned = grammar
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        self.matcher.fill_next_token_bitmask(self.bitmask)
        out = logits.clone().unsqueeze(0)                       # [1, V]
        self._xgr.apply_token_bitmask_inplace(out, self.bitmask)
        if self.banned is not None and self.banned.numel():
            out[0, self.banned[self.banned < out.shape[1]]] = float("-inf")
        return out[0]

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise OficinaError(f"grammar rejected token {token}")  # the mask makes this a bug
