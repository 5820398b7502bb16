"""Training files -> validated records, each remembering its file and line.

Formats: ``.txt`` (paragraphs separated by blank lines), ``.jsonl`` (one JSON object per line),
``.csv`` (a header row naming the fields). A file holds records of one shape, detected from its
first record:

    text         {"text"}                                  plain text for a causal LM
    instruction  {"instruction", "output"} (+ "input")     instruction tuning (Alpaca's fields)
    chat         {"messages": [{"role", "content"}, ...]}  rendered with the model's chat template
    pair         {"input", "target"}                       seq2seq
    labelled     {"text", "label"}                         sequence classification
    preference   {"prompt", "chosen", "rejected"}          DPO and reward models (``align``)

Everything wrong with a file is an error naming ``file:line``; nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from ..errors import FormatError
from ..formats import records
from ..formats.untrusted import decode

# shape -> (required fields, optional fields), in detection order
SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "preference": (("prompt", "chosen", "rejected"), ()),
    "chat": (("messages",), ()),
    "instruction": (("instruction", "output"), ("input",)),
    "pair": (("input", "target"), ()),
    "labelled": (("text", "label"), ()),
    "text": (("text",), ()),
}
ROLES = ("system", "user", "assistant")
SUFFIXES = (".txt", ".jsonl", ".csv")


@dataclass(frozen=True)
class Record:
    fields: dict[str, Any]
    where: str  # "file:line", for error messages


@dataclass
class Dataset:
    path: Path
    shape: str
    records: list[Record]
    digest: str  # sha256 of the file's bytes (lineage)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[str]:
        return sorted({r.fields["label"] for r in self.records}) if self.shape == "labelled" else []


def read(path: str | Path) -> Dataset:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FormatError(f"{path}: no such data file")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise FormatError(f"{p}: unknown data format {suffix or '(no suffix)'}; "
                          f"expected {', '.join(SUFFIXES)}")
    raw = p.read_bytes()
    items = READERS[suffix](p, decode(p, raw))
    out, shape = [], None
    for fields, where in items:
        if shape is None:
            shape = _detect(fields, where)
        out.append(Record(_check(fields, shape, where), where))
    if not out:
        raise FormatError(f"{p}: no records (the file is empty)")
    return Dataset(p, shape, out, "sha256:" + hashlib.sha256(raw).hexdigest())


def split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out ``fraction`` of the records (at least one) as a validation set; the same seed
    always holds out the same records."""
    n_val = round(len(ds) * fraction)
    if fraction <= 0 or len(ds) < 2:
        return ds, None
    n_val = min(max(n_val, 1), len(ds) - 1)
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    train = [r for i, r in enumerate(ds.records) if i not in held]
    val = [r for i, r in enumerate(ds.records) if i in held]
    return replace(ds, records=train), replace(ds, records=val)


# -- readers: yield (fields, "file:line") ---------------------------------------------------------
def _txt(p: Path, text: str) -> Iterator[tuple[dict, str]]:
    para: list[str] = []
    start = 0
    for n, line in enumerate(records.lines(text), 1):
        if line.strip():
            if not para:
                start = n
            para.append(line)
        elif para:
            yield {"text": "\n".join(para)}, f"{p}:{start}"
            para = []
    if para:
        yield {"text": "\n".join(para)}, f"{p}:{start}"


READERS = {".txt": _txt, ".jsonl": records.jsonl, ".csv": records.csv_rows}


# -- validation -----------------------------------------------------------------------------------
def _detect(fields: dict, where: str) -> str:
    for shape, (required, _) in SHAPES.items():
        if required[0] in fields and all(f in fields for f in required):
            return shape
    for shape, (required, _) in SHAPES.items():
        if required[0] in fields:
            missing = [f for f in required if f not in fields]
            raise FormatError(f"{where}: missing field {missing[0]!r} ({shape} records need "
                              f"{', '.join(required)})")
    shapes = "; ".join("{" + ", ".join(r) + "}" for r, _ in SHAPES.values())
    raise FormatError(f"{where}: unknown record with fields {sorted(fields)}; expected one of {shapes}")


def _check(fields: dict, shape: str, where: str) -> dict:
    required, optional = SHAPES[shape]
    for f in required:
        if f not in fields:
            raise FormatError(f"{where}: missing field {f!r} ({shape} records need {', '.join(required)})")
    out: dict[str, Any] = {}
    for f in required + optional:
        if f not in fields or fields[f] is None:
            continue
        value = fields[f]
        if f == "messages":
            out[f] = _messages(value, where)
        elif f == "label":
            if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
                raise FormatError(f"{where}: 'label' must be a non-empty string or integer (got {value!r})")
            out[f] = str(value).strip()
        else:
            if not isinstance(value, str):
                raise FormatError(f"{where}: field {f!r} must be a string (got {type(value).__name__})")
            if f in required and not value.strip():
                raise FormatError(f"{where}: field {f!r} is empty")
            out[f] = value
    return out


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise FormatError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise FormatError(f"{where}: message {i} must be {{'role': {'|'.join(ROLES)}, "
                              f"'content': string}}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise FormatError(f"{where}: the conversation has no assistant message to learn from")
    return out
