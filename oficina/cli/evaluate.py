"""``oficina eval``: score one or more models on tasks, print one table, write JSON and a chart."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..evaluation import EvalConfig, evaluate, parse_tasks, save_metrics
from ..evaluation.chart import draw
from ..evaluation.multiple_choice import STYLES
from ..evaluation.tasks import KINDS
from .common import console, option_flags, options_from, registry

DEFAULT_TASKS = "ppl:builtin,mc:builtin,truthful:builtin"


def eval_(args) -> None:
    cfg = EvalConfig(shots=args.shots, mc_style=args.mc_style, window=args.window,
                     stride=args.stride, batch_tokens=args.batch_tokens, limit=args.limit,
                     options=options_from(args), bootstrap=args.bootstrap)
    specs = parse_tasks(args.tasks)
    reg = registry()
    report = evaluate(args.models, specs, cfg, registry=reg)
    written = []
    if args.out:  # files only when asked for
        prefix = Path(args.out)
        written.append(report.save(prefix.with_name(prefix.name + ".json")))
        if not args.no_chart:
            written.append(draw(report, prefix.with_name(prefix.name + ".png"), every=args.all))
    if args.save:
        refs = save_metrics(report, reg)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    c = console()
    if not c.is_terminal:  # a file or pipe has no width to respect: one cell, one line
        from rich.console import Console

        c = Console(highlight=False, width=200)
    c.print(table(report, args.all))
    c.print(_notes(report), markup=False, highlight=False)
    if args.save and refs:
        c.print(f"metrics saved to {', '.join(refs)} (see `oficina history NAME`)", markup=False)
    if written:
        c.print(f"wrote {', '.join(str(p) for p in written)}", markup=False)


def fmt(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return str(v)
    a = abs(v)
    return f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 10 else f"{v:.3f}"


def table(report, every: bool = False):
    from rich.table import Table

    t = Table(box=None, pad_edge=False, show_lines=False)
    t.add_column("MODEL", no_wrap=True)
    cols = report.columns(every)
    first = report.models[0].label
    for task, name in cols:
        m = report.metric(first, task, name)
        arrow = "" if m is None else (" ↑" if m.higher_is_better else " ↓")
        t.add_column(f"{_short(task)}\n{name}{arrow}", justify="right", overflow="fold")
    for i, rec in enumerate(report.models):
        cells = [rec.label + ("" if rec.ref is None else f"\n[dim]{rec.ref}[/]")]
        for task, name in cols:
            m = report.metric(rec.label, task, name)
            if m is None:
                cells.append("-")
                continue
            cell = fmt(m.value) + (f"\n[dim]±{fmt(m.ci95)}[/]" if m.ci95 is not None else "")
            d = report.delta(rec.label, task, name) if i else None
            if d is not None:
                diff, _, sig = d
                good = (diff > 0) == m.higher_is_better
                text = f"Δ{'+' if diff >= 0 else ''}{fmt(diff)}{'*' if sig else ''}"
                cell += f"\n[{'green' if good else 'red'}]{text}[/]" if sig else f"\n[dim]{text}[/]"
            cells.append(cell)
        t.add_row(*cells)
    return t


def _short(task: str) -> str:
    kind, _, source = task.partition(":")
    return kind if source == "builtin" else f"{kind}:{Path(source).name}"


def _notes(report) -> str:
    lines = [("± = 95% interval (standard error; bootstrap for corpus scores); Δ = change against "
              f"{report.models[0].label}, * = outside its paired 95% interval")]
    for rec in report.models:
        for task, r in report.results[rec.label].items():
            d = r.details
            if "tokens" in d:
                what = (f"{d['tokens']:,} tokens, {d['bytes']:,} bytes, {d['windows']} window(s) "
                        f"of {d['window']}, stride {d['stride']}")
            elif "confusion" in d:
                what = f"{d['items']} texts; confusion (rows true {d['labels']}): {d['confusion']}"
            elif "chance" in d:
                what = f"{d['items']} items, chance {d['chance']:.3f}"
                what += f", {d['shots']}-shot {d['style']}" if "shots" in d else ""
            else:
                what = f"{d.get('items', '?')} prompts"
            lines.append(f"{rec.label} · {task}: {what} ({r.seconds:.1f} s)")
    return "\n".join(lines)


def register(sub) -> None:
    s = sub.add_parser(
        "eval", help="evaluate and compare models: perplexity, BLEU/ROUGE, accuracy, multiple choice",
        description="Score models on tasks and print them side by side (rows: models, columns: "
                    "metrics, with the change against the first model); --out PREFIX writes PREFIX.json "
                    "(model and task digests, options, version) and PREFIX.png.")
    s.add_argument("models", nargs="+", metavar="MODEL", help="registry names (name:tag@N) or paths")
    s.add_argument("--tasks", default=DEFAULT_TASKS,
                   help=f"comma-separated KIND:FILE or KIND:builtin (a bare KIND = builtin); kinds: "
                        f"{', '.join(KINDS)} (default {DEFAULT_TASKS})")
    s.add_argument("--shots", type=int, default=0, help="few-shot examples for mc (default 0)")
    s.add_argument("--mc-style", default="cloze", choices=list(STYLES),
                   help="mc prompt: cloze (ARC), letters (MMLU), plain (HellaSwag) (default cloze)")
    s.add_argument("--window", type=int, help="tokens per forward pass (default: context length, at most 2048)")
    s.add_argument("--stride", type=int, help="perplexity: new tokens per window (default: the window)")
    s.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per batch (default 4096)")
    s.add_argument("--limit", type=int, help="score only the first N items of each task")
    s.add_argument("--bootstrap", type=int, default=200, help="resamples for corpus-score intervals")
    s.add_argument("--out", metavar="PREFIX",
                   help="write PREFIX.json and PREFIX.png (nothing is written without it)")
    s.add_argument("--no-chart", action="store_true", help="with --out: do not draw the PNG")
    s.add_argument("--json", action="store_true",
                   help="print the whole report as JSON (what --out writes to PREFIX.json) instead of the table")
    s.add_argument("--all", action="store_true", help="every metric, not just the headline ones")
    s.add_argument("--save", action="store_true",
                   help="attach the headline metrics to each registry version (oficina history)")
    option_flags(s)
    s.set_defaults(func=eval_)
