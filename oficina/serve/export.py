"""Reviewed log entries -> training files: the chat JSONL ``oficina tune`` reads and the
preference pairs ``oficina dpo`` reads (their shapes are ``tuning.data.SHAPES``).

- **chat**: each entry rated good keeps its answer; each corrected entry (``--better``) takes the
  reviewer's answer instead. The conversation is the request's messages plus that answer.
- **pairs**: a corrected entry gives ``chosen = better, rejected = output``; two answers to the
  same conversation rated good and bad give ``chosen = good, rejected = bad``. A pair holds one
  prompt (``align.pairs`` renders it as a single user turn), so only single-turn conversations
  without a system message become pairs; the others are counted as skipped, never silently
  rewritten.

The file is written to a temporary name, read back through the trainers' own readers, and only
then moved into place: what this writes is what ``tune``/``dpo`` accept.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import OficinaError
from ..tuning.data import ROLES
from .convlog import Entry


@dataclass
class Exported:
    path: Path
    records: int
    skipped: dict[str, int]  # reason -> count


def chat_records(entries: list[Entry]) -> tuple[list[dict], dict[str, int]]:
    out, skipped = [], {}
    for e in entries:
        if e.failed and not e.better:
            _skip(skipped, "failed requests")
            continue
        answer = e.better if e.better else (e.output if e.rating == "good" else None)
        if answer is None:
            _skip(skipped, "rated bad without a correction" if e.rating == "bad" else "not reviewed")
            continue
        if not _plain(e.messages):
            _skip(skipped, "tool or non-text messages")
            continue
        out.append({"messages": [{"role": m["role"], "content": m["content"]} for m in e.messages]
                    + [{"role": "assistant", "content": answer}]})
    return out, skipped


def pair_records(entries: list[Entry]) -> tuple[list[dict], dict[str, int]]:
    out, skipped, seen = [], {}, set()
    by_conversation: dict[str, dict[str, list[Entry]]] = {}
    for e in entries:
        prompt = _single_prompt(e.messages)
        if prompt is None:
            _skip(skipped, "multi-turn or system-prompt conversations")
            continue
        if e.better and e.better.strip() != e.output.strip():
            _add(out, seen, prompt, e.better, e.output)
        if e.rating in ("good", "bad"):
            by_conversation.setdefault(prompt, {}).setdefault(e.rating, []).append(e)
    for prompt, rated in by_conversation.items():
        for good in rated.get("good", []):
            for bad in rated.get("bad", []):
                if good.output.strip() != bad.output.strip():
                    _add(out, seen, prompt, good.output, bad.output)
    return out, skipped


FORMATS = {"chat": (chat_records, ".jsonl"), "pairs": (pair_records, ".jsonl")}


def export(entries: list[Entry], fmt: str, path: str | Path) -> Exported:
    if fmt not in FORMATS:
        raise OficinaError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    build, suffix = FORMATS[fmt]
    records, skipped = build(entries)
    if not records:
        why = "; ".join(f"{n} {reason}" for reason, n in skipped.items())
        raise OficinaError(f"nothing to export: {len(entries)} matching log entries give no {fmt} records"
                           + (f" ({why})" if why else "") + " — rate answers with `oficina logs rate ID good` "
                           "or correct them with `--better`")
    dest = Path(path).expanduser()
    if dest.suffix.lower() != suffix:
        raise OficinaError(f"{dest}: {fmt} exports are {suffix} files")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=suffix, dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _read_back(fmt, Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Exported(dest, len(records), skipped)


def _read_back(fmt: str, path: Path) -> None:
    # here, not at the top: align/pairs.py loads torch, and `oficina logs` imports this module
    if fmt == "pairs":
        from ..align.pairs import read
    else:
        from ..tuning.data import read
    read(path)


def _plain(messages: list[dict]) -> bool:
    return all(m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages) and \
        any(m.get("role") == "user" for m in messages)


def _single_prompt(messages: list[dict]) -> str | None:
    if len(messages) == 1 and messages[0].get("role") == "user" and isinstance(messages[0].get("content"), str):
        return messages[0]["content"]
    return None


def _add(out: list[dict], seen: set, prompt: str, chosen: str, rejected: str) -> None:
    if (prompt, chosen, rejected) not in seen and chosen.strip() and rejected.strip():
        seen.add((prompt, chosen, rejected))
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})


def _skip(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1
