"""``oficina redteam``: the adversarial suite on one or more models, with and without guards."""

from __future__ import annotations

import json

from ..errors import OficinaError
from ..registry.registry import Registry
from ..safety.redteam import FAMILIES, draw, load_probes, saved
from ..safety.redteam import redteam as run_suite
from .common import console


def redteam(args) -> int:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..api import load

    reg = Registry()
    guards = tuple(args.guard or ())
    configs = [()] + ([guards] if guards else []) if args.both else [guards]
    if args.saved:
        return _print_saved(args, reg, configs)
    probes = load_probes(args.probes, args.limit, args.family)
    if not probes:
        raise OficinaError("no probes selected (check --family)")
    options = {"num_predict": args.num_predict} if args.num_predict is not None else None
    reports = []
    for name in args.models:
        model = load(name, registry=reg)
        for g in configs:
            reports.append(run_suite(model, g, probes, judge_guard=args.judge, options=options,
                                     registry=reg, save=not args.no_save))
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2, ensure_ascii=False))
    else:
        _table([(r.label, {**{f: _cell(r, f) for f in FAMILIES}, "all": _cell(r, None),
                           "over_refusal": _cell(r, "benign")}) for r in reports])
        if args.verbose:
            for r in reports:
                for o in r.outcomes:
                    mark = "SUCCESS" if o.success and o.probe.family != "benign" else \
                        "OVER-REFUSED" if o.success else "ok"
                    print(f"[{r.label}] {o.probe.family:<14} {mark:<12} {o.why}: {o.answer[:100]!r}")
        if not args.no_save and any(r.model for r in reports):
            print("saved as each version's metrics (oficina history MODEL)")
    if args.chart:
        print(f"wrote {draw(reports, args.chart)}")
    return 0


def _cell(r, family):
    outs = [o for o in r.outcomes if (o.probe.family == family if family else o.probe.family != "benign")]
    if not outs:
        return "-"
    k = sum(o.success for o in outs)
    return f"{k / len(outs):.2f} ({k}/{len(outs)})"


def _table(rows) -> None:
    from rich.table import Table


    t = Table()
    t.add_column("model (+guards)")
    cols = list(rows[0][1]) if rows else []
    for c in cols:
        t.add_column(c + " ↓", justify="right")
    for label, cells in rows:
        t.add_row(label, *[cells[c] for c in cols])
    c = console()
    c.print(t)
    c.print("attack success rate per family (↓ lower is better); over_refusal: benign prompts "
            "refused or blocked", markup=False)


def _print_saved(args, reg, configs) -> int:
    rows = []
    for name in args.models:
        entry = reg.get(name)
        for g in configs:
            m = saved(entry, g)
            if not m:
                raise OficinaError(f"{entry.ref} has no saved red-team metrics"
                                   f"{' with ' + '+'.join(g) if g else ''}; run oficina redteam first")
            label = entry.ref + (f" +{'+'.join(g)}" if g else "")
            rows.append((label, {c: f"{m[k]:.2f}" if (k := ("asr." + c if c != "over_refusal" else c)) in m
                                 else "-" for c in list(FAMILIES) + ["all", "over_refusal"]}))
    if args.json:
        print(json.dumps({label: cells for label, cells in rows}, indent=2))
    else:
        _table(rows)
    return 0


def register(sub) -> None:
    s = sub.add_parser("redteam", help="adversarial prompts by family; attack success and over-refusal")
    s.add_argument("models", nargs="+", metavar="MODEL")
    s.add_argument("--guard", action="append", metavar="GUARD",
                   help="run with this guard on prompts and answers (repeatable)")
    s.add_argument("--both", action="store_true", help="run each model without and with the guards")
    s.add_argument("--limit", type=int, help="first N probes of each family")
    s.add_argument("--family", action="append", help="only this family (repeatable); benign too")
    s.add_argument("--probes", help="a JSONL suite instead of the built-in one")
    s.add_argument("--judge", default="content", help="the classifier guard that judges answers")
    s.add_argument("--num-predict", type=int, help="answer length in tokens (default 96)")
    s.add_argument("--no-save", action="store_true", help="do not store the metrics in the registry")
    s.add_argument("--saved", action="store_true", help="show stored metrics side by side, run nothing")
    s.add_argument("--chart", metavar="PNG", help="draw attack success per family")
    s.add_argument("--json", action="store_true")
    s.add_argument("--verbose", action="store_true", help="every answer and why it counted")
    s.set_defaults(func=redteam)
