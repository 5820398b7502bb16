"""Changing weights: ``tune`` (one method, or ``--compare`` several) and ``merge``."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..errors import OficinaError
from ..tuning.compare import compare
from ..tuning.config import TuneConfig, coerce
from ..tuning.method import load_all
from .common import console, count, human, literal, registry, short

# recipe fields that are positional, have their own flag below, or are not flags at all
_NOT_FLAGS = {"base", "options"}
_ALIASES = {"learning_rate": ["--lr"], "data": ["-d"], "out": ["-o"], "method": ["-m"]}


def _config_from(args):
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TuneConfig)
             if f.name not in _NOT_FLAGS and getattr(args, f.name, None) is not None}
    if args.base:
        given["base"] = args.base
    options = {}
    for item in args.opt or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OficinaError(f"--opt {item!r}: expected KEY=VALUE (e.g. --opt r=16)")
        options[key.strip().replace("-", "_")] = value
    if args.recipe:
        cfg = TuneConfig.from_file(args.recipe)
        overrides = coerce(TuneConfig, given)  # converts and checks the flags' values
        changes = {k: getattr(overrides, k) for k in given}
        if changes.get("method", cfg.method) != cfg.method:
            cfg.options = {}  # the recipe's settings belong to its own method
        cfg = dataclasses.replace(cfg, **changes)
        cfg.options = {**cfg.options, **options}
    else:
        cfg = coerce(TuneConfig, given)
        cfg.options = options
    cfg.method_config()  # check method options before any model is loaded
    return cfg


def tune(args) -> int | None:
    if args.methods:
        return _print_methods(load_all())
    cfg = _config_from(args)
    reg = registry()
    if args.compare:
        rows = compare(cfg, [m.strip() for m in args.compare.split(",") if m.strip()], reg)
        _print_compare(rows, cfg)
        return 1 if any(r.error for r in rows) else None
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..tuning.run import tune as run_tune

    r = run_tune(cfg, reg, resume=args.resume)
    _print_result(r)
    return None


def summary_table():
    """The two-column table (bold names, values) a training command reports its result in."""
    from rich.table import Table

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    return t


def registered_row(t, r) -> None:
    """The row saying which registry version a run became, when it became one."""
    if r.entry is not None:
        t.add_row("registered", f"{short(r.entry.name)} version {r.entry.version} "
                                f"(from {r.entry.parent or r.config.base})")


def _print_result(r) -> None:
    m = r.metrics
    if not m:  # a torchrun rank other than 0: rank 0 reports
        return
    t = summary_table()
    t.add_row("method", f"{r.method} ({r.task})")
    t.add_row("trainable", f"{count(r.trainable)} of {count(r.parameters)} ({m['trainable_percent']:.3g}%)")
    t.add_row("steps", f"{m['steps']} ({m['epochs']:g} epochs, {count(m['tokens'])} tokens)")
    t.add_row("train loss", _num(m.get("train_loss")))
    if "val_loss" in m:
        t.add_row("validation loss", _num(m["val_loss"]))
    if "val_accuracy" in m:
        t.add_row("validation accuracy", f"{m['val_accuracy']:.1%}")
    if r.perplexity_before is not None:
        change = 100 * (r.perplexity_after / r.perplexity_before - 1)
        t.add_row("forgetting check", f"perplexity on general text {r.perplexity_before:.2f} → "
                                      f"{r.perplexity_after:.2f} ({change:+.0f}%; lower is better)")
    t.add_row("speed", f"{m['tokens_per_s']:,.0f} tokens/s, {m['wall_seconds']:.1f}s wall")
    t.add_row("peak memory", human(m["peak_memory"]))
    t.add_row("saved", f"{human(r.artifact_bytes)} in {r.artifact}")
    t.add_row("loss curve", str(r.curve))
    registered_row(t, r)
    console().print(t)


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _print_compare(rows, cfg) -> None:
    from rich.table import Table

    length = (f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.epochs} epochs" if cfg.epochs
              else "epochs for at least 30 steps")
    t = Table(title=f"{cfg.base}: same data, {length}, max_length {cfg.max_length}, {cfg.precision}")
    cols = ["method", "trainable", "peak mem", "tokens/s", "wall", "train loss", "val loss"]
    if any(r.val_accuracy is not None for r in rows):
        cols.append("val acc")
    cols.append("on disk")
    forgetting = any(r.perplexity_before is not None for r in rows)
    if forgetting:
        cols.append("ppl general (before → after)")
    for c in cols:
        t.add_column(c, justify="left" if c == "method" else "right")
    for r in rows:
        if r.error:
            t.add_row(r.method, f"[red]failed: {r.error}[/]", *[""] * (len(cols) - 2))
            continue
        cells = [r.method, f"{count(r.trainable)} ({r.trainable_percent:.3g}%)", human(r.peak_memory),
                 f"{r.tokens_per_s:,.0f}", f"{r.wall_seconds:.1f}s", _num(r.train_loss), _num(r.val_loss)]
        if "val acc" in cols:
            cells.append("-" if r.val_accuracy is None else f"{r.val_accuracy:.1%}")
        cells.append(human(r.artifact_bytes))
        if forgetting:
            cells.append("-" if r.perplexity_before is None else f"{r.perplexity_before:.2f} → {r.perplexity_after:.2f}")
        t.add_row(*cells)
    console().print(t)
    console().print("peak mem: the training process's resident memory (CPU) or allocator peak (GPU); "
                    "on disk: adapter or model weights written")


def _print_methods(methods) -> None:
    from rich.table import Table

    t = Table(title="tuning methods")
    for c in ("method", "what changes", "settings (--opt KEY=VALUE)", "default lr", "merge"):
        t.add_column(c)
    for name, m in methods.items():
        defaults = m.config()  # default_factory fields too (LoRA's target_modules)
        settings = ", ".join(f"{f.name}={getattr(defaults, f.name)!r}" for f in dataclasses.fields(m.config))
        lr = f"{m.learning_rate:g}"
        if m.small_model_learning_rate is not None:
            lr += f" ({m.small_model_learning_rate:g} under 1B parameters)"
        t.add_row(name, m.summary, settings, lr, "yes" if m.merge else "-")
    console().print(t)


def merge(args) -> int | None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..tuning.run import merge as run_merge

    entry = run_merge(args.name, args.out, registry())
    console().print(f"merged {', '.join(entry.producer.get('adapters', []))} into {short(entry.name)} "
                    f"version {entry.version} ({human(entry.manifest.size)}, from {entry.parent})")
    return None


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TuneConfig)
    g = p.add_argument_group("recipe (the same names as in a YAML recipe; flags override it)")
    for f in dataclasses.fields(TuneConfig):
        if f.name in _NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + _ALIASES.get(f.name, [])
        helptext = literal(f.metadata.get("help", ""))
        if hints[f.name] is bool:
            g.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{helptext} (default {'on' if f.default else 'off'})")
        else:
            default = "" if f.default in (None, "") else f" (default {f.default})"
            g.add_argument(*names, dest=f.name, metavar=f.name.upper().replace("_", "-"),
                           help=f"{helptext}{default}")


def register(sub) -> None:
    s = sub.add_parser("tune", help="change a model's weights: lora, qlora, prompt, prefix, ia3, adapter, full",
                       description="Train BASE on --data with one method (or --compare several) and "
                                   "register the result as --out.")
    s.add_argument("base", nargs="?", help="registry name or model folder")
    s.add_argument("--recipe", "-f", metavar="FILE", help="a YAML recipe with the same names as the flags")
    s.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="a setting of the method, e.g. --opt r=16 --opt target_modules=q_proj,v_proj "
                        "(oficina tune --methods lists them)")
    s.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint of the same run")
    s.add_argument("--compare", metavar="M1,M2,...",
                   help="train each method on the same data and print one table")
    s.add_argument("--methods", action="store_true", help="list the tuning methods and their settings")
    _add_config_flags(s)
    s.set_defaults(func=tune)

    m = sub.add_parser("merge", help="fold a model's LoRA/IA3 adapters into its weights")
    m.add_argument("name")
    m.add_argument("--out", "-o", help="register the merged model under this name (default: a new "
                                       "version of NAME)")
    m.set_defaults(func=merge)
