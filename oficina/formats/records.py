"""Record files from outside (JSON Lines, CSV), read so that every error names ``file:line``.

The one reader behind training data (``tuning.data``), evaluation task files
(``evaluation.tasks``) and preference pairs (``align.pairs``): each yields ``(fields, where)``
with ``where = "path:line"`` for the caller's own checks to cite.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator

from ..errors import FormatError


def lines(text: str) -> list[str]:
    """``text`` split into lines at ``\n`` (a ``\r`` before it dropped), the way every record
    reader here counts lines. Not ``str.splitlines()``: it also breaks at U+2028, U+2029, U+0085
    and other characters that JSON allows raw inside strings (RFC 8259 section 7), which scraped
    text is full of, and its line numbers would disagree with an editor's."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def jsonl(path: Path, text: str) -> Iterator[tuple[dict, str]]:
    """One JSON object per line; blank lines are skipped."""
    for n, line in enumerate(lines(text), 1):
        if line.strip():
            yield json_object(line, f"{path}:{n}"), f"{path}:{n}"


def json_object(line: str, where: str, expected: str | None = None) -> dict:
    """The JSON object on one line of a record file (``where``: ``file:line``); else one error
    line saying where and what was ``expected``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise FormatError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: {expected or f'expected a JSON object, got {type(obj).__name__}'}")
    return obj


def csv_rows(path: Path, text: str) -> Iterator[tuple[dict, str]]:
    """A header row naming the fields, then one record per row; blank rows are skipped."""
    # csv splits rows itself (at \n, \r\n, \r; a quoted field may hold line breaks)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        return
    header = [f.strip() for f in reader.fieldnames]
    reader.fieldnames = header
    try:
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise FormatError(f"{path}:{reader.line_num}: expected {len(header)} columns "
                                  f"({', '.join(header)})")
            if not any(v.strip() for v in row.values()):
                continue
            yield dict(row), f"{path}:{reader.line_num}"
    except csv.Error as e:
        raise FormatError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
