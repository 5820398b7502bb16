"""``oficina stats``: latency, speed and cost of what the server answered, from its log."""

from __future__ import annotations

import json
from dataclasses import asdict

from .common import console, count, short
from .logs import _cost, _db, open_log, parse_when


def stats(args) -> None:
    from rich.table import Table

    # here, not at the top: loads numpy (`oficina --help` stays light)
    from ..serve import stats as st

    entries = open_log(args).find(model=args.model, since=parse_when(args.since),
                                  until=parse_when(args.until), newest_first=False)
    models, days = st.by_model(entries), st.by_day(entries)
    if args.json:
        print(json.dumps({"models": [asdict(m) for m in models], "days": [asdict(d) for d in days]}, indent=2))
        return
    c = console()
    if not entries:
        c.print("no requests in the log for this selection")
        return
    t = Table(box=None, pad_edge=False, title="by model", title_justify="left")
    for col in ("MODEL", "REQUESTS", "FAILED", "CACHED", "LATENCY p50", "p95", "TTFT p50", "p95",
                "TOKENS/S", "PROMPT", "GENERATED", "COST"):
        t.add_column(col, justify="left" if col == "MODEL" else "right")
    for m in models:
        t.add_row(short(m.model), str(m.requests), str(m.failed), str(m.cached), _s(m.latency_p50),
                  _s(m.latency_p95), _s(m.ttft_p50), _s(m.ttft_p95),
                  "-" if m.tokens_per_s is None else f"{m.tokens_per_s:.1f}",
                  count(m.prompt_tokens), count(m.output_tokens), _cost(m.cost))
    c.print(t)
    t = Table(box=None, pad_edge=False, title="cost by day", title_justify="left")
    for col in ("DAY", "MODEL", "REQUESTS", "TOKENS", "COST"):
        t.add_column(col, justify="left" if col in ("DAY", "MODEL") else "right")
    for d in days:
        t.add_row(d.day, short(d.model), str(d.requests), count(d.tokens), _cost(d.cost))
    c.print()
    c.print(t)


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def register(sub) -> None:
    p = sub.add_parser("stats", help="latency p50/p95, tokens/s and cost by model and day, from the server's log")
    p.add_argument("--model", help="only this model")
    p.add_argument("--since", metavar="WHEN", help="from this time on: 30m, 2h, 7d or 2026-11-30")
    p.add_argument("--until", metavar="WHEN", help="before this time")
    p.add_argument("--json", action="store_true")
    _db(p)
    p.set_defaults(func=stats)
