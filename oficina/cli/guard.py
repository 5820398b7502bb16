"""``oficina guard``: check a text with a guard, train the content classifier, measure a guard."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import OficinaError
from ..safety import check
from ..safety.classifier import CONTENT_MODEL, data_path, train_content
from ..safety.guard import GUARDS, MAX_CHARS, GuardError, _load_builtins
from ..safety.measure import measure
from .common import console

SUBCOMMANDS = ("list", "train", "eval")


def _read_input(args) -> str:
    if args.prompt is not None and args.file:
        raise GuardError("give the text or --file, not both")
    if args.prompt is not None:
        return args.prompt
    if args.file:
        try:
            with open(args.file, "rb") as f:
                data = f.read(MAX_CHARS * 4 + 1)
        except OSError as e:
            raise GuardError(f"cannot read {args.file}: {e.strerror or e}") from None
        where = args.file
    elif not sys.stdin.isatty():
        data, where = sys.stdin.buffer.read(MAX_CHARS * 4 + 1), "stdin"
    else:
        raise GuardError("give a text, --file FILE, or pipe the text in")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise GuardError(f"{where}:{line}: not valid UTF-8 at byte {e.start} ({e.reason})") from None


def _context(args) -> dict | None:
    if not args.source:
        return None
    texts = []
    for path in args.source:
        try:
            texts.append(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise OficinaError(f"cannot read source {path}: {e}") from None
    return {"sources": texts}


def guard(args) -> int:
    if args.name in SUBCOMMANDS:
        return {"list": _list, "train": _train, "eval": _eval}[args.name](args)

    text = _read_input(args)
    v = check(text, args.name, _context(args))
    redacted = v.redacted if v.redacted is not None else text
    if args.json:
        print(json.dumps({"verdict": v.verdict, "category": v.category, "score": round(v.score, 4),
                          "spans": [{"start": s.start, "end": s.end, "category": s.category} for s in v.spans],
                          "redacted": redacted}, ensure_ascii=False))
    else:
        print(f"verdict   {v.verdict}")
        if v.verdict != "allow":
            print(f"category  {v.category}")
            print(f"score     {v.score:.3f}")
            for s in v.spans:
                print(f"span      {s.start}-{s.end}  {s.category:<12} {text[s.start:s.end][:60]!r}")
        if v.verdict == "redact":
            print(f"redacted  {redacted}")
    return 1 if v.blocked and args.exit_code else 0


def _list(args) -> int:
    _load_builtins()
    for k in sorted(GUARDS.values(), key=lambda k: k.name):
        name = f"{k.name}={k.arg}" if k.arg else k.name
        print(f"{name:<22} {k.help}")
    return 0


def _train(args) -> int:
    r = train_content(out=args.out or CONTENT_MODEL)
    print(f"registered {r.entry.ref}" if getattr(r, "entry", None) else "trained")
    return 0


def _eval(args) -> int:
    spec = args.prompt
    if not spec:
        raise OficinaError("usage: oficina guard eval GUARD [--data FILE]")
    data = args.data or data_path({"pii": "pii_heldout.jsonl", "grounding": "grounding_heldout.jsonl"}
                                  .get(spec, "content_heldout.jsonl"))
    m = measure(spec, data)
    if args.json:
        print(json.dumps(m.to_dict(), indent=2, ensure_ascii=False))
        return 0
    from rich.table import Table


    c = console()
    c.print(f"{m.guard} on {m.data} ({m.items} texts)", markup=False)
    t = Table()
    for col in ("category", "precision", "recall", "F1", "FPR", "TP", "FP", "FN"):
        t.add_column(col, justify="left" if col == "category" else "right")
    for cat, s in m.categories.items():
        t.add_row(cat, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}", f"{s.fpr:.3f}",
                  str(s.tp), str(s.fp), str(s.fn))
    c.print(t)
    lo, hi = m.macro_f1_ci
    c.print(f"macro F1 {m.macro_f1:.3f} (95% bootstrap interval {lo:.3f}-{hi:.3f}); "
            f"latency {m.ms_per_1000_chars:.2f} ms per 1,000 characters", markup=False)
    if args.verbose:
        for e in m.errors:
            c.print(f"  {e}", markup=False)
    return 0


def register(sub) -> None:
    s = sub.add_parser("guard", help="check a text with a guard (pii, content, rules=FILE, ...); "
                                     "also: guard list | guard train | guard eval GUARD")
    s.add_argument("name", help="a guard (pii, content, rules=FILE, classifier=MODEL, grounding), "
                                "or list / train / eval")
    s.add_argument("prompt", nargs="?", metavar="TEXT", help="the text (else --file or stdin); for eval: the guard")
    s.add_argument("--file", "-f", help="read the text from this file")
    s.add_argument("--source", action="append", metavar="FILE",
                   help="grounding: a source text the answer must be supported by (repeatable)")
    s.add_argument("--json", action="store_true", help="print the verdict as JSON")
    s.add_argument("--exit-code", action="store_true", help="exit 1 when the verdict is block")
    s.add_argument("--data", help="eval: a held-out labelled JSONL file (default: the built-in one)")
    s.add_argument("--out", help="train: registry name (default guard-content)")
    s.add_argument("--verbose", action="store_true", help="eval: list every mistake")
    s.set_defaults(func=guard)
