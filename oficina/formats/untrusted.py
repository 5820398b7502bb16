"""Text and JSON files from outside, read with bounds: a size cap before anything is decoded,
UTF-8 checked with the line of the first bad byte named, JSON nesting checked before the parser
recurses. Errors are one line, of the caller's error kind. The readers of prompt specs, rule
files, record files (training data, eval tasks) and model folders' JSON all come here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from ..errors import FormatError

MAX_JSON_DEPTH = 64  # real configs nest 3-4 levels; Python's json recurses once per level


def decode(path: Path | str, raw: bytes, error: Callable[[str], Exception] = FormatError) -> str:
    """``raw`` as UTF-8 text, or an error naming the line of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None


def read_bytes(path: Path | str, max_bytes: int, kind: str,
               error: Callable[[str], Exception] = FormatError) -> bytes:
    """The bytes of ``path``, reading at most ``max_bytes`` (a bigger file is refused as not a
    ``kind``, e.g. "rule file"); ``error`` makes the one-line error."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {kind} {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        size = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes:,} bytes"
        raise error(f"{path}: larger than {size}; not a {kind}")
    return data


def read_text(path: Path | str, max_bytes: int, kind: str,
              error: Callable[[str], Exception] = FormatError) -> str:
    """``read_bytes``, as UTF-8 text."""
    return decode(path, read_bytes(path, max_bytes, kind, error), error)


def read_json(path: Path) -> dict:
    """A JSON object from a model folder, or FormatError: unreadable, not JSON, not an object,
    or nested so deep (``[[[[...``) that parsing it would exhaust the interpreter's stack."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    depth = _max_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise FormatError(f"{path}: nested {depth:,} levels deep (a model config nests a few); not read")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _max_depth(text: str) -> int:
    """How deep ``[`` / ``{`` nest, outside strings (one linear scan with re, no recursion)."""
    depth = deepest = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest
