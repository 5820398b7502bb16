"""New models: ``tokenizer train``, ``pretrain`` (from an architecture config) and ``distill``
(a student from a teacher)."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from ..errors import OficinaError
from ..pretrain.config import PretrainConfig
from ..tuning.config import TuneConfig, coerce
from .common import console, count, human, literal, registry, short
from .tune import summary_table

# the shared loop's settings, as flags (TuneConfig's names and help; one home for both)
LOOP_FLAGS = ("learning_rate", "schedule", "warmup_steps", "epochs", "max_steps", "batch_size", "grad_accum",
              "max_length", "precision", "seed", "weight_decay", "max_grad_norm", "val_split", "eval",
              "eval_every", "save_every", "log_every", "keep_checkpoints", "run_dir", "gradient_checkpointing")
_ALIASES = {"learning_rate": ["--lr"], "data": ["-d"], "out": ["-o"], "method": ["-m"]}


def loop_flags(p: argparse.ArgumentParser, names: tuple[str, ...] = LOOP_FLAGS, title: str = "training") -> None:
    hints = typing.get_type_hints(TuneConfig)
    help_of = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TuneConfig)}
    g = p.add_argument_group(f"{title} (the names of `oficina tune`'s recipe)")
    for name in names:
        helptext = literal(help_of[name])
        names_ = ["--" + name.replace("_", "-")] + _ALIASES.get(name, [])
        if hints[name] is bool:
            g.add_argument(*names_, dest=name, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            g.add_argument(*names_, dest=name, metavar=name.upper().replace("_", "-"), help=helptext)


def loop_values(args, names: tuple[str, ...] = LOOP_FLAGS) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def tune_config(args, base: str, names: tuple[str, ...], **fixed):
    """A TuneConfig from flags (converted and checked by its own rules)."""
    given = {**loop_values(args, names), **{k: v for k, v in fixed.items() if v is not None}, "base": base}
    options = {}
    for item in getattr(args, "opt", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OficinaError(f"--opt {item!r}: expected KEY=VALUE (e.g. --opt r=16)")
        options[key.strip().replace("-", "_")] = value
    cfg = coerce(TuneConfig, given)
    cfg.options = options
    return cfg


# -- tokenizer train ------------------------------------------------------------------------------
def tokenizer_train(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..pretrain.tokenizer import train_tokenizer

    try:
        vocab = int(args.vocab_size)
    except ValueError:
        raise OficinaError(f"--vocab-size: expected an integer (got {args.vocab_size!r})") from None
    tok = train_tokenizer(args.corpus, vocab, args.out, sentinels=args.sentinels, min_frequency=args.min_frequency)
    sample = "The quick brown fox jumps over the lazy dog."
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    console().print(f"trained a byte-level BPE tokenizer of {len(tok):,} tokens; wrote {args.out}/tokenizer.json")
    console().print(f"{sample!r} -> {len(ids)} tokens: " + " ".join(repr(tok.decode([i])) for i in ids))


# -- pretrain -------------------------------------------------------------------------------------
def pretrain(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..pretrain.run import prepare
    from ..pretrain.run import pretrain as run

    if not args.config:
        raise OficinaError("give --config FILE.yaml (see oficina/data/pretrain/small.yaml)")
    cfg = PretrainConfig.from_file(args.config).with_overrides(loop_values(args))
    plan = prepare(cfg, args.data, args.out, registry(), tokenizer=args.tokenizer)
    _print_plan(plan)
    if args.plan:
        return
    r = run(plan, resume=args.resume)
    _print_pretrain(r)


def _print_plan(plan) -> None:
    a, s, t = plan.config.arch, plan.size, plan.config.train
    tbl = summary_table()
    tbl.add_row("model", f"{plan.family.like} {plan.family.kind} ({plan.family.model_class}), "
                         f"objective {plan.objective.name}: {plan.objective.summary}")
    shape = f"{a.layers} layers" + (f" + {a.decoder_layers} decoder layers" if a.decoder_layers else "")
    tbl.add_row("shape", f"{shape}, {a.heads} heads ({a.kv_heads} key/value), embedding {a.embedding_length}, "
                         f"MLP {a.feed_forward_length}, context {a.context_length}, vocabulary {a.vocab_size:,}")
    tbl.add_row("parameters", f"{count(s.parameters)} ({s.parameters:,}; {s.embedding_parameters / s.parameters:.0%} "
                              f"in embeddings)")
    tbl.add_row("memory estimate", f"{human(s.total)}: weights {human(s.weights)}, gradients + AdamW "
                                   f"{human(s.optimizer)}, activations {human(s.activations)} "
                                   f"(batch {t.batch_size} x {t.max_length} tokens, {t.precision})")
    tbl.add_row("tokenizer", f"{len(plan.tokenizer):,} tokens, {plan.tokenizer_source}")
    tbl.add_row("corpus", f"{plan.corpus.path} ({human(plan.corpus.size)})")
    steps = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs or 1} epoch(s)"
    tbl.add_row("training", f"{steps}, lr {t.lr:g} ({t.schedule}, {t.warmup_steps} warmup), batch "
                            f"{t.batch_size} x {t.grad_accum}, run folder {plan.run_dir}")
    console().print(tbl)


def _print_pretrain(r) -> None:
    m = r.metrics
    if not m:
        return
    tbl = summary_table()
    tbl.add_row("steps", f"{m['steps']} ({m['epochs']:g} epochs, {count(m['tokens'])} tokens)")
    tbl.add_row("train loss", _num(m.get("train_loss")))
    for v in r.loop.val_history:
        tbl.add_row(f"validation @ step {v['step']}", f"loss {v['loss']:.4f}, perplexity {v['perplexity']:.2f}")
    if r.perplexity_init is not None:
        tbl.add_row("perplexity at start", f"{r.perplexity_init:.2f} (untrained; the vocabulary has "
                                           f"{r.plan.special.vocab:,} tokens)")
    tbl.add_row("unigram baseline", f"perplexity {r.unigram_perplexity:.2f} (token frequencies of the "
                                    f"training split, no context)")
    tbl.add_row("speed", f"{m['tokens_per_s']:,.0f} tokens/s, {m['wall_seconds']:.1f}s wall")
    tbl.add_row("peak memory", f"{human(m['peak_memory'])} (estimate {human(m['memory_estimate'])} for training "
                               f"alone)")
    tbl.add_row("saved", str(r.folder))
    tbl.add_row("loss curve", str(r.curve))
    if r.entry is not None:
        tbl.add_row("registered", f"{short(r.entry.name)} version {r.entry.version}")
    console().print(tbl)
    if r.samples:
        console().print("[bold]samples[/]")
        for _, text in r.samples:
            console().print("  " + text.replace("\n", "\n  "), markup=False)


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


# -- distill --------------------------------------------------------------------------------------
DISTILL_FLAGS = LOOP_FLAGS + ("data", "out", "train_on", "truncate", "packing")


def distill(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..align.distill import DistillConfig
    from ..align.distill import distill as run

    settings = coerce(DistillConfig, {k: getattr(args, k) for k in ("temperature", "alpha")
                                      if getattr(args, k) is not None})
    cfg = tune_config(args, args.teacher, DISTILL_FLAGS)
    r = run(cfg, args.student, settings, registry(), resume=args.resume)
    _print_distill(r)


def _print_distill(r) -> None:
    from rich.table import Table

    t = Table(title=f"teacher vs student on {r.config.data} (held-out)")
    for c in ("", "parameters", "fp32 weights", "perplexity", "KL from teacher", "forward tokens/s"):
        t.add_column(c, justify="left" if not c else "right")
    for label, s in (("teacher", r.teacher), ("student before", r.student_before), ("student after", r.student)):
        t.add_row(f"{label}: {short(s.ref)}", count(s.parameters), human(s.weights), f"{s.perplexity:.2f}",
                  "-" if s.kl is None else f"{s.kl:.4f}", f"{s.tokens_per_s:,.0f}" if s.tokens_per_s else "-")
    console().print(t)
    ratio = r.teacher.parameters / max(r.student.parameters, 1)
    speed = r.student.tokens_per_s / r.teacher.tokens_per_s if r.teacher.tokens_per_s else 0
    console().print(f"student is {ratio:.1f}x smaller and {speed:.1f}x the teacher's speed; "
                    f"T {r.settings.temperature:g}, alpha {r.settings.alpha:g}; {r.loop.steps} steps, "
                    f"{r.loop.wall_seconds:.1f}s; loss curve {r.curve}")
    if r.entry is not None:
        console().print(f"registered {short(r.entry.name)} version {r.entry.version} (from {r.entry.parent})")


# -- registration ---------------------------------------------------------------------------------
def register(sub) -> None:
    tk = sub.add_parser("tokenizer", help="train a tokenizer for a new model")
    tsub = tk.add_subparsers(dest="tokenizer_command", metavar="COMMAND")
    tr = tsub.add_parser("train", help="train a byte-level BPE tokenizer on a corpus",
                         description="Train a byte-level BPE tokenizer (Hugging Face tokenizers) on CORPUS "
                                     "(.txt, .jsonl or a folder) and save it as DIR/tokenizer.json.")
    tr.add_argument("corpus", help="a .txt file (paragraphs are documents), .jsonl ({\"text\"}) or a folder")
    tr.add_argument("--vocab-size", required=True, metavar="N", help="tokens in all, special tokens included")
    tr.add_argument("--out", "-o", required=True, metavar="DIR", help="folder to write")
    tr.add_argument("--sentinels", type=int, default=32, metavar="N",
                    help="<extra_id_N> tokens for T5-style span corruption (default 32)")
    tr.add_argument("--min-frequency", type=int, default=2, metavar="N",
                    help="merge only pairs seen at least N times (default 2)")
    tk.set_defaults(func=lambda args: tokenizer_train(args) if args.tokenizer_command == "train"
                    else tk.print_help() or 2)

    p = sub.add_parser("pretrain", help="train a new model from an architecture config",
                       description="Build a model from --config (family, layers, heads, kv_heads, "
                                   "embedding_length, feed_forward_length, context_length, vocab_size), "
                                   "show its size and memory estimate, train it on --data with its "
                                   "family's objective and register it as --out.")
    p.add_argument("--config", "-f", metavar="FILE", help="architecture and training recipe (YAML)")
    p.add_argument("--data", "-d", required=True, metavar="CORPUS", help=".txt, .jsonl or a folder of them")
    p.add_argument("--out", "-o", metavar="NAME", help="registry name of the new model")
    p.add_argument("--tokenizer", metavar="DIR_OR_MODEL",
                   help="use this tokenizer (default: the config's, else one trained on the corpus)")
    p.add_argument("--plan", action="store_true", help="check the config, show size and memory, and stop")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of the same run")
    loop_flags(p, title="training (override the config's train: section)")
    p.set_defaults(func=pretrain)

    d = sub.add_parser("distill", help="train a smaller student on a teacher's output distributions",
                       description="Logit distillation: the student learns the teacher's temperature-softened "
                                   "next-token distributions (KL) mixed with the usual loss on --data.")
    d.add_argument("teacher", help="registry name or model folder")
    d.add_argument("--student", required=True, metavar="NAME_OR_CONFIG",
                   help="a registry model or folder sharing the teacher's tokenizer, or a pretraining "
                        "config (.yaml) built with the teacher's tokenizer")
    d.add_argument("--temperature", "-T", metavar="T", help="softens both distributions (default 2)")
    d.add_argument("--alpha", metavar="A", help="weight of the teacher's term; 1-A on the data's (default 0.5)")
    d.add_argument("--resume", action="store_true", help="continue from the last checkpoint of the same run")
    loop_flags(d, ("data", "out", "train_on", "truncate", "packing"), title="data")
    loop_flags(d, title="training")
    d.set_defaults(func=distill)
