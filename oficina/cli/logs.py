"""Reviewing what the server answered: ``oficina logs`` list / search / show / rate / export."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

from ..errors import OficinaError
from ..serve.convlog import RATED_CHOICES, ConvLog, default_path
from ..serve.export import export as run
from .common import console, short

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(value: str | None) -> float | None:
    """``2h``, ``3d``, ``45m`` ago, or a date/time ``2026-11-30`` / ``2026-11-30T14:00`` (local)."""
    if not value:
        return None
    m = _AGO.fullmatch(value.strip())
    if m:
        return time.time() - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise OficinaError(f"cannot read time {value!r}: use 30m, 2h, 7d or a date like 2026-11-30") from None


def open_log(args):
    path = Path(args.db) if args.db else default_path()
    if not path.exists():
        raise OficinaError(f"no conversation log at {path} yet: `oficina serve` writes it")
    return ConvLog(path)


def selection(args, default_rated: str | None = None):
    return dict(model=args.model, since=parse_when(args.since), until=parse_when(args.until),
                text=getattr(args, "text", None), slow=args.slow, failed=args.failed,
                rated=args.rated or default_rated)


def list_(args) -> None:
    from rich.table import Table

    entries = open_log(args).find(**selection(args), limit=args.limit)
    if args.json:
        print(json.dumps([_as_json(e) for e in entries], ensure_ascii=False, indent=2))
        return
    if not entries:
        console().print("no matching log entries")
        return
    t = Table(box=None, pad_edge=False)
    for col in ("ID", "WHEN", "MODEL", "ROUTE", "TOKENS", "TTFT", "TOTAL", "COST", "", "RATED", "PROMPT"):
        t.add_column(col, no_wrap=col != "PROMPT", overflow="ellipsis")
    for e in entries:
        flags = ("cached " if e.cached else "") + ("FAILED" if e.failed else "")
        rated = (e.rating or "") + ("+fix" if e.better else "")
        t.add_row(str(e.id), time.strftime("%m-%d %H:%M:%S", time.localtime(e.created)), short(e.model),
                  e.route, f"{e.prompt_tokens}+{e.output_tokens}", _secs(e.ttft_s), _secs(e.total_s),
                  _cost(e.cost), flags.strip(), rated or "-", _one_line(e.prompt_text(), 60))
    console().print(t)


def show(args) -> None:
    e = open_log(args).get(args.id)
    if args.json:
        print(json.dumps(_as_json(e), ensure_ascii=False, indent=2))
        return
    c = console()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created))
    c.print(f"[bold]#{e.id}[/] {when}  {short(e.model)} ({e.digest[7:19] or '?'})  {e.route}"
            + (f"  key {e.key_id}" if e.key_id else "") + ("  [cyan]cached[/]" if e.cached else ""))
    c.print(f"tokens {e.prompt_tokens} prompt + {e.output_tokens} generated; queue {_secs(e.queue_s)}, "
            f"first token {_secs(e.ttft_s)}, total {_secs(e.total_s)}; cost {_cost(e.cost)}; "
            f"finish {e.finish or '-'}")
    if e.options:
        c.print("options " + json.dumps(e.options, ensure_ascii=False), markup=False)
    if e.extra:
        c.print("request " + json.dumps(e.extra, ensure_ascii=False), markup=False)
    for m in e.messages:
        c.print(f"\n[bold]{m.get('role', '?')}[/]")
        c.print(str(m.get("content", "")), markup=False)
    c.print("\n[bold]assistant (answer)[/]")
    c.print(e.output, markup=False)
    if e.tool_calls:
        c.print("tool calls " + json.dumps(e.tool_calls, ensure_ascii=False), markup=False)
    if e.error:
        c.print(f"[red]error:[/] {e.error}")
    if e.rating or e.note or e.better:
        c.print(f"\n[bold]review[/] {e.rating or '-'}" + (f": {e.note}" if e.note else ""))
        if e.better:
            c.print("[bold]better answer[/]")
            c.print(e.better, markup=False)


def rate(args) -> None:
    if args.rating is None and args.better is None and args.note is None:
        raise OficinaError("say good or bad, or give --better TEXT or --note TEXT")
    e = open_log(args).rate(args.id, args.rating, note=args.note, better=args.better)
    print(f"#{e.id} rated {e.rating or '-'}" + (" with a corrected answer" if e.better else ""))


def export(args) -> None:
    entries = open_log(args).find(**selection(args, default_rated="any"), newest_first=False)
    r = run(entries, args.format, args.out)
    skipped = "".join(f"; skipped {n} ({why})" for why, n in r.skipped.items())
    what = ("conversation" if args.format == "chat" else "preference pair") + ("s" if r.records != 1 else "")
    what += " (oficina tune --data)" if args.format == "chat" else " (oficina dpo --data)"
    print(f"wrote {r.records} {what} to {r.path}{skipped}")


def _as_json(e) -> dict:
    from dataclasses import asdict

    return asdict(e)


def _secs(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.0f}ms" if s < 1 else f"{s:.2f}s"


def _cost(c: float | None) -> str:
    return "-" if c is None else f"{c:.8f}".rstrip("0").rstrip(".") if c else "0"


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _filters(p) -> None:
    g = p.add_argument_group("selection")
    g.add_argument("--model", help="only this model")
    g.add_argument("--since", metavar="WHEN", help="from this time on: 30m, 2h, 7d or 2026-11-30")
    g.add_argument("--until", metavar="WHEN", help="before this time")
    g.add_argument("--slow", type=float, metavar="SECONDS", help="took at least this long")
    g.add_argument("--failed", action="store_true", help="only requests that failed")

    g.add_argument("--rated", choices=RATED_CHOICES, help="by review: good, bad, corrected, any, none")


def _db(p) -> None:
    p.add_argument("--db", metavar="PATH", help="the log database (default $OFICINA_HOME/logs.db)")


def register(sub) -> None:
    p = sub.add_parser("logs", help="review the server's conversation log: list, search, show, rate, export")
    lsub = p.add_subparsers(dest="logs_command", metavar="ACTION", required=True)

    s = lsub.add_parser("list", aliases=["ls"], help="recent requests, newest first")
    _filters(s)
    s.add_argument("-n", "--limit", type=int, default=20, help="at most this many (default 20; 0 = all)")
    s.add_argument("--json", action="store_true")
    _db(s)
    s.set_defaults(func=list_, text=None)

    s = lsub.add_parser("search", help="requests whose prompt or answer contains TEXT")
    s.add_argument("text", metavar="TEXT")
    _filters(s)
    s.add_argument("-n", "--limit", type=int, default=20)
    s.add_argument("--json", action="store_true")
    _db(s)
    s.set_defaults(func=list_)

    s = lsub.add_parser("show", help="one conversation: prompt, answer, timings, cost, review")
    s.add_argument("id", type=int)
    s.add_argument("--json", action="store_true")
    _db(s)
    s.set_defaults(func=show)

    s = lsub.add_parser("rate", help="review an answer: good or bad, a note, a corrected answer")
    s.add_argument("id", type=int)
    s.add_argument("rating", choices=("good", "bad"), nargs="?")
    s.add_argument("--note", help="why")
    s.add_argument("--better", metavar="TEXT", help="the answer the model should have given")
    _db(s)
    s.set_defaults(func=rate)

    s = lsub.add_parser("export", help="reviewed entries as training data: chat JSONL (tune) or pairs (dpo)")
    s.add_argument("-o", "--out", required=True, metavar="FILE.jsonl")
    s.add_argument("--format", choices=("chat", "pairs"), default="chat",
                   help="chat: conversations for `oficina tune`; pairs: prompt/chosen/rejected for `oficina dpo`")
    _filters(s)
    _db(s)
    s.set_defaults(func=export, text=None)
