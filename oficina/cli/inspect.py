"""Looking inside a model: tokenize, predict, attention, embed, similarity, weights."""

from __future__ import annotations

import json
import sys

from ..errors import OficinaError
from ..options import Options
from .common import console, count, option_flags, options_from
from .rag import embed_files


def _load(args):
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..api import load

    return load(args.name)


def _text(args) -> str:
    """The TEXT argument, or standard input when it is left out (for long texts). Its dest is
    "prompt" so that ``main`` gathers a TEXT given after flags, as for ``run``."""
    text = args.prompt
    if text is None:
        if sys.stdin.isatty():
            raise OficinaError("give a TEXT argument, or pipe the text in")
        text = sys.stdin.read()
    return text


def _json(d) -> None:
    print(json.dumps(d, indent=2, ensure_ascii=False))


def _table(*columns: str, right: tuple[str, ...] = ()):
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left")
    return t


def tokenize(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..inspect import tokenize as do

    t = do(_load(args), _text(args), special=not args.no_special)
    if args.json:
        return _json(t.to_dict())
    tab = _table("#", "ID", "TOKEN", "PIECE", "SPAN", right=("#", "ID"))
    for k in t.tokens:
        span = "special" if k.special else "-" if k.start is None else f"{k.start}-{k.end}"
        tab.add_row(str(k.index), str(k.id), k.label, k.piece, span)
    c = console()
    c.print(tab, markup=False)
    ctx = (f"the context length is {t.context_length} ({100 * t.count / t.context_length:.2g}% used)"
           if t.context_length else "this model has no fixed context length")
    c.print(f"{t.count} tokens; {ctx}", markup=False)
    if not t.fits:
        c.print(f"too long by {t.count - t.context_length} tokens", markup=False)
    c.print("decodes back to the text exactly" if t.round_trip
            else f"decodes back as {json.dumps(t.decoded, ensure_ascii=False)}", markup=False)


# Shown even at their defaults; the rest only when set, since they are off by default.
ALWAYS = ("temperature", "top_k", "top_p", "min_p")


def predict(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..inspect import predict as do
    from ..inspect.predict import SAMPLING_PARAMS

    opts = options_from(args)  # checked before the model loads
    p = do(_load(args), _text(args), top=args.top, **opts)
    if args.json:
        return _json(p.to_dict())
    c = console()
    params, default = p.options.to_dict(), Options().to_dict()
    shown = ", ".join(f"{k} {params[k]}" for k in SAMPLING_PARAMS
                      if k in ALWAYS or params[k] != default[k])
    c.print(f"next token after {p.prompt_tokens} prompt tokens", markup=False)
    c.print(f"parameters: {shown}", markup=False)
    tab = _table("RANK", "TOKEN", "ID", "LOGIT", "P", "P AFTER", "", right=("RANK", "ID", "LOGIT", "P", "P AFTER"))
    for k in p.top:
        bar = "█" * round(20 * k.prob_after)
        tab.add_row(str(k.rank), json.dumps(k.text, ensure_ascii=False), str(k.id), f"{k.logit:.2f}",
                    f"{100 * k.prob:.2f}%", f"{100 * k.prob_after:.2f}%" if k.prob_after else "-", bar)
    c.print(tab, markup=False)
    c.print("P: the model's softmax; P AFTER: what sampling draws from (- = removed)", markup=False)
    c.print(f"entropy {p.entropy:.2f} bits before the parameters (as uncertain as "
            f"{2 ** p.entropy:.1f} equally likely tokens), {p.entropy_after:.2f} bits after; "
            f"{p.kept} of {p.vocab_size} tokens can be drawn", markup=False)


def attention(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..inspect import attention as do
    from ..inspect import find_token, plots

    a = do(_load(args), _text(args), layer=args.layer)
    head = None if args.head in ("mean", "all") else _int(args.head, "--head")
    a.map(head)  # checks the head's range before anything is written
    i = find_token(a, args.token)
    top = a.top(i, args.top, head)
    if args.output:
        plots.attention_png(a, args.output, head=args.head if args.head == "all" else head)
    if args.json:
        d = a.to_dict(head)
        d["token"] = i
        d["attends_to"] = [{"index": t.index, "text": t.text, "weight": w} for t, w in top]
        return _json(d)
    which = f"mean of {a.heads} heads" if head is None else f"head {head} of 0..{a.heads - 1}"
    print(f"{a.part}, layer {a.layer} of 0..{a.layers - 1}, {which}; {len(a.tokens)} tokens")
    print(f"token {i} {a.tokens[i].label} attends most to:")
    for t, w in top:
        print(f"  {w:6.3f}  {t.index:>3}  {t.label}")
    print(f"wrote {args.output}" if args.output else "(-o map.png writes the heatmap)")


def _int(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise OficinaError(f"{flag} takes a number, 'mean' or 'all', got {value!r}") from None


def _vec(v, edge: int = 4) -> str:
    xs = v.tolist()
    parts = [f"{x:.4f}" for x in (xs if len(xs) <= 2 * edge else xs[:edge] + xs[-edge:])]
    if len(xs) > 2 * edge:
        parts.insert(edge, "...")
    return "[" + ", ".join(parts) + "]"


def embed(args) -> None:
    if args.file:  # vectors for files, batched (the retrieval encoder): cli/rag.py

        return embed_files(args)
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..inspect import embed as do

    e = do(_load(args), _text(args), pooling=args.pooling)
    if args.json:
        return _json(e.to_dict(tokens=args.tokens))
    print(f"embedding length {e.embedding_length}; {len(e.tokens)} tokens")
    print(f"sentence vector ({e.pooling} pooling of the last hidden states), norm "
          f"{float(e.sentence.norm()):.3f}:\n  {_vec(e.sentence)}")
    if args.tokens:
        print("input embedding of each token (a row of the embedding table):")
        for t, v in zip(e.tokens, e.token_vectors):
            print(f"  {t.index:>3} {t.label:<14} norm {float(v.norm()):7.3f}  {_vec(v, 3)}")


def similarity(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..inspect import similarity as do

    s = do(_load(args), args.text_a, args.text_b, pooling=args.pooling)
    if args.json:
        return _json(s.to_dict())
    print(f"cosine similarity {s.cosine:.4f} ({s.pooling} pooling, {s.embedding_length}-number vectors)")


def weights(args) -> None:
    # here, not at the top: loads torch (`oficina --help` stays light)
    from ..inspect import plots
    from ..inspect import weights as do

    w = do(_load(args), layer=args.layer, tensor=args.tensor, bins=args.bins)
    if args.output:
        plots.histogram_png(w.histogram, args.output, log=args.log)
    if args.json:
        return _json(w.to_dict())
    c = console()
    tab = _table("PARAMETER", "SHAPE", "DTYPE", "STORED", "COUNT", "COMPONENT", right=("COUNT",))
    for r in w.tree():
        shape = "×".join(map(str, r["shape"])) if r["shape"] else "various"
        times = f" ×{r['times']}" if r["times"] > 1 else ""
        stored = ", ".join(k if n == r["times"] else f"{k} ×{n}" for k, n in r["stored"].items())
        tab.add_row(r["name"], shape + times, r["dtype"], stored, count(r["count"]), r["component"])
    c.print(tab, markup=False)
    where = f"layer {w.layer} of 0..{w.layers - 1}" if w.layer is not None else f"{w.layers} layers"
    c.print(f"\n{count(w.total)} parameters in {where} ({w.total:,}):", markup=False)
    for comp, n in w.totals.items():
        c.print(f"  {comp:<13} {count(n):>7}  {100 * n / max(w.total, 1):5.1f}%", markup=False)
    for name, shared in (w.tied.items() if w.layer is None else ()):
        c.print(f"{name} is the same tensor as {shared} (tied; counted once)", markup=False)
    h = w.histogram
    c.print(f"\n{h.name}: mean {h.mean:.4g}, std {h.std:.4g}, min {h.min:.4g}, max {h.max:.4g}"
            f"{f', stored as {h.stored}' if h.stored else ''}"
            f"{' (dequantized values)' if h.dequantized else ''}", markup=False)
    c.print(f"wrote {args.output}" if args.output else "(-o hist.png draws its histogram; "
            "--tensor picks another)", markup=False)


def register(sub) -> None:
    s = sub.add_parser("tokenize", help="the tokens of a text: ids, pieces, spans, count vs context")
    s.add_argument("name")
    s.add_argument("prompt", nargs="?", metavar="text", help="the text (default: standard input)")
    s.add_argument("--no-special", action="store_true", help="do not add BOS/[CLS]/... tokens")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=tokenize)

    s = sub.add_parser("predict", help="the next-token distribution, before and after sampling parameters")
    s.add_argument("name")
    s.add_argument("prompt", nargs="?", metavar="text",
                   help="the text to continue, as is (no chat template)")
    s.add_argument("--top", type=int, default=10, help="how many tokens to list (default 10)")
    s.add_argument("--json", action="store_true")
    option_flags(s)
    s.set_defaults(func=predict)

    s = sub.add_parser("attention", help="attention weights of one layer: heatmap and top tokens")
    s.add_argument("name")
    s.add_argument("prompt", nargs="?", metavar="text")
    s.add_argument("--layer", type=int, default=-1, help="layer index, negative from the end (default -1)")
    s.add_argument("--head", default="mean", help="head index, 'mean' of the layer (default) or 'all' (grid)")
    s.add_argument("--token", help="the token whose attention to list: index or a word of the text "
                                   "(default: the last token)")
    s.add_argument("--top", type=int, default=5, help="how many attended tokens to list (default 5)")
    s.add_argument("-o", "--output", metavar="PNG", help="write the heatmap here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=attention)

    s = sub.add_parser("embed", help="embedding length and vectors: sentence vector, per-token embeddings")
    s.add_argument("name")
    s.add_argument("prompt", nargs="?", metavar="text")
    s.add_argument("--tokens", action="store_true", help="also each token's input embedding")
    s.add_argument("--pooling", choices=("mean", "cls", "last"),
                   help="how hidden states become one vector (default: the model's, else mean)")
    s.add_argument("--json", action="store_true")
    s.add_argument("-f", "--file", action="append", metavar="PATH",
                   help="embed files instead (.txt .md .html .pdf .jsonl; repeat), JSONL out")
    s.add_argument("--lines", action="store_true", help="with --file: one vector per line")
    s.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="with --file")
    s.add_argument("-o", "--output", metavar="JSONL", help="with --file: write here")
    s.set_defaults(func=embed)

    s = sub.add_parser("similarity", help="cosine similarity of two texts' sentence vectors")
    s.add_argument("name")
    s.add_argument("text_a")
    s.add_argument("text_b")
    s.add_argument("--pooling", choices=("mean", "cls", "last"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=similarity)

    s = sub.add_parser("weights", help="parameter tree, totals per component, histogram of a tensor")
    s.add_argument("name")
    s.add_argument("--layer", type=int, help="only this layer (negative from the end)")
    s.add_argument("--tensor", help="tensor for the histogram (name or a unique part of it)")
    s.add_argument("--bins", type=int, default=100)
    s.add_argument("--log", action="store_true", help="logarithmic count axis (shows outliers)")
    s.add_argument("-o", "--output", metavar="PNG", help="write the histogram here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=weights)
