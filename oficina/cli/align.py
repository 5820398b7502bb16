"""Preferences: ``dpo`` (Direct Preference Optimization), ``reward`` (train a reward model) and
``score`` (rank candidate answers with one)."""

from __future__ import annotations

from ..errors import OficinaError
from ..tuning.config import coerce
from .common import console, count, registry
from .pretrain import LOOP_FLAGS, loop_flags, tune_config
from .tune import registered_row, summary_table

PAIR_FLAGS = ("data", "out", "method", "truncate") + LOOP_FLAGS


def dpo(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..align.dpo import DPOConfig
    from ..align.dpo import dpo as run

    settings = coerce(DPOConfig, {"beta": args.beta} if args.beta is not None else {})
    cfg = tune_config(args, args.base, PAIR_FLAGS)
    cfg.method_config()  # refuse unknown method settings before loading the model
    r = run(cfg, settings, _registry(), resume=args.resume)
    _print(r, f"dpo (beta {settings.beta:g})")


def reward(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..align.reward import reward as run

    cfg = tune_config(args, args.base, PAIR_FLAGS)
    cfg.method_config()
    r = run(cfg, _registry(), resume=args.resume)
    _print(r, "reward model")


def score(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..align.reward import score as run

    candidates = list(args.candidates)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                candidates += [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise OficinaError(f"cannot read {args.file}: {e.strerror or e}") from None
    ranked = run(args.model, args.prompt, candidates, _registry())
    width = max(len(f"{s:.3f}") for _, s in ranked)
    console().print(f"{'RANK':>4}  {'REWARD':>{width}}  ANSWER")
    for i, (text, s) in enumerate(ranked, 1):
        console().print(f"{i:>4}  {s:>{width}.3f}  {text}", markup=False)


def _registry():
    return registry()


def _print(r, what: str) -> None:
    m = r.metrics
    if not m:
        return
    t = summary_table()
    t.add_row("trained", f"{what}, {r.method}: {count(r.trainable)} of {count(r.parameters)} parameters")
    t.add_row("steps", f"{m['steps']} ({m['epochs']:g} epochs), train loss {m['train_loss']:.4f}")
    if "accuracy" in r.before:
        t.add_row("held-out preference accuracy", f"{r.before['accuracy']:.1%} before → "
                                                  f"{r.after.get('accuracy', float('nan')):.1%} after "
                                                  f"(chosen scored above rejected)")
    if "reward_accuracy" in r.after:
        t.add_row("implicit reward accuracy", f"{r.after['reward_accuracy']:.1%} "
                                              f"(beta·log π/π_ref ranks the chosen answer first)")
    if "loss" in r.before:
        t.add_row("held-out loss", f"{r.before['loss']:.4f} → {r.after.get('loss', float('nan')):.4f}")
    t.add_row("speed", f"{m['tokens_per_s']:,.0f} tokens/s, {m['wall_seconds']:.1f}s wall")
    t.add_row("saved", str(r.artifact))
    t.add_row("loss curve", str(r.curve))
    registered_row(t, r)
    console().print(t)


def register(sub) -> None:
    common_help = ("preference pairs: .jsonl (or .csv) with prompt, chosen, rejected; the method is any "
                   "weight-changing tuning method (full, lora, ...; oficina tune --methods)")
    for name, fn, summary in (
            ("dpo", dpo, "Direct Preference Optimization on preference pairs"),
            ("reward", reward, "train a reward model (a sequence-scoring head) on preference pairs")):
        s = sub.add_parser(name, help=summary, description=f"{summary}. {common_help}.")
        s.add_argument("base", help="registry name (base or tuned) or model folder")
        if name == "dpo":
            s.add_argument("--beta", metavar="B", help="how far the model may move from where it started (default 0.1)")
        s.add_argument("--opt", action="append", metavar="KEY=VALUE", help="a setting of the method, e.g. --opt r=16")
        s.add_argument("--resume", action="store_true", help="continue from the last checkpoint of the same run")
        loop_flags(s, PAIR_FLAGS)
        s.set_defaults(func=fn)

    sc = sub.add_parser("score", help="rank candidate answers with a reward model")
    sc.add_argument("model", help="a reward model (oficina reward)")
    sc.add_argument("prompt", help="the prompt the candidates answer")
    sc.add_argument("candidates", nargs="*", help="candidate answers")
    sc.add_argument("--file", metavar="FILE", help="more candidates, one a line")
    sc.set_defaults(func=score)
