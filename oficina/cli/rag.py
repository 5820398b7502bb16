"""Retrieval (RAG): oficina rag create/ingest/list/show/rm/history/rollback/reindex/search/ask/eval."""

from __future__ import annotations

import json
import os
import sys
import time

from ..errors import OficinaError
from ..formats.atomic import atomic_write
from ..formats.documents import DocumentError, read_document
from .common import console, human, option_flags, options_from, print_history, registry, when

# oficina.rag loads torch, FAISS and numpy: every command below imports it inside its function
# (`oficina --help` and `list` stay light; tests/test_first_run.py)


def _rel(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("../..") else path
    except ValueError:
        return path


def create(args) -> None:
    from ..rag import collection

    cfg = collection.CollectionConfig(args.embed, args.chunk_tokens, args.overlap, args.index)
    e = collection.create(args.name, cfg, registry())
    print(f"created collection {args.name} (version {e.version}): {e.manifest.params['embed']} "
          f"({e.manifest.params['embed_digest'][7:19]}), {cfg.chunk_tokens}-token chunks, "
          f"overlap {cfg.overlap}, index {cfg.index}")


def ingest(args) -> None:
    from ..rag import collection

    t = time.perf_counter()
    rep = collection.ingest(args.name, args.paths, prune=args.prune, registry=registry(),
                            max_bytes=int(args.max_file_mb * 1e6), tags=args.tag)
    for path, why in rep.skipped:
        print(f"skipped {_rel(path)}: {why}", file=sys.stderr)
    for suffix, n in sorted(rep.unsupported.items()):
        print(f"skipped {n} file(s) of unsupported type {suffix}", file=sys.stderr)
    for source, n, why in rep.flagged:
        print(f"flagged {_rel(source)} chunk {n}: looks like instructions ({', '.join(why)}); "
              f"neutralised in prompts", file=sys.stderr)
    secs = time.perf_counter() - t
    summary = (f"{len(rep.added)} added, {len(rep.updated)} updated, {rep.unchanged} unchanged, "
               f"{len(rep.removed)} removed, {len(rep.skipped)} skipped; {rep.chunks} chunks "
               f"embedded in {secs:.1f} s")
    if rep.version is None:
        print(f"{args.name} is up to date ({summary})")
    else:
        print(f"{args.name} version {rep.version}: {summary}")


def list_(args) -> None:
    from rich.table import Table

    from ..rag.collection import display, list_collections

    entries = list_collections(registry())
    if args.json:
        print(json.dumps([{"name": display(e.name), "version": e.version, **e.manifest.details,
                           **e.manifest.params} for e in entries], indent=2))
        return
    t = Table(box=None, pad_edge=False)
    for col in ("NAME", "VERSION", "DOCS", "CHUNKS", "INDEX", "EMBED", "SIZE", "MODIFIED"):
        t.add_column(col)
    for e in entries:
        d = e.manifest.details
        t.add_row(display(e.name), str(e.version), str(d.get("documents")), str(d.get("chunks")),
                  str(d.get("index")), str(d.get("embed")), human(e.manifest.size),
                  when(e.created, seconds=False))
    console().print(t)


def show(args) -> None:
    from rich.table import Table

    from ..rag.retrieve import Collection

    col = Collection(args.name, registry(), args.version)
    e, cfg = col.entry, col.config
    docs = col.documents()
    flagged = col.flagged()
    if args.json:
        print(json.dumps({"name": col.name, "version": e.version, "digest": e.digest,
                          "parent": e.parent, "config": e.manifest.params, "documents": docs,
                          "flagged": [h.to_dict() for h in flagged]}, indent=2))
        return
    c = console()
    c.print(f"collection {col.name} version {e.version} ({e.digest[7:19]}), parent {e.parent}",
            markup=False)
    c.print(f"  embed     {cfg.embed} ({(cfg.embed_digest or '?')[7:19]}), {cfg.dim} dims, "
            f"window {cfg.window} tokens", markup=False)
    c.print(f"  chunks    {len(col)} of {cfg.chunk_tokens} tokens, overlap {cfg.overlap}; "
            f"index {e.manifest.details.get('index')} ({cfg.index}); {human(e.manifest.size)}",
            markup=False)
    t = Table(box=None, pad_edge=False)
    for h in ("SOURCE", "KIND", "CHUNKS", "FLAGGED", "SIZE", "TITLE"):
        t.add_column(h)
    for d in docs[: args.limit]:
        t.add_row(_rel(d["source"]), d["kind"], str(d["chunks"]), str(d["flagged"] or "-"),
                  human(d["size"]), d["title"] or "-")
    c.print(t)
    if len(docs) > args.limit:
        c.print(f"... and {len(docs) - args.limit} more documents (--limit)", markup=False)
    for h in flagged:
        c.print(f"flagged: {_rel(h.source)} chars {h.start}-{h.end} ({', '.join(h.flags)}): "
                f"{h.text[:100]!r}", markup=False)


def rm(args) -> None:
    from ..rag import collection

    for name in args.names:
        freed = collection.remove(name, registry())
        print(f"deleted collection {name} ({human(freed)} freed)")


def history(args) -> None:
    from ..rag import collection

    versions, head = collection.history(args.name, registry())
    print_history(versions, head, {
        "DOCS": lambda e: str(e.manifest.details.get("documents")),
        "CHUNKS": lambda e: str(e.manifest.details.get("chunks")),
        "INDEX": lambda e: str(e.manifest.details.get("index"))})


def rollback(args) -> None:
    from ..rag import collection

    e = collection.rollback(args.name, args.to, registry())
    print(f"{args.name} now points at version {e.version} ({e.digest[7:19]})")


def reindex(args) -> None:
    from ..rag import collection

    e = collection.reindex(args.name, args.kind, registry())
    print(f"{args.name} version {e.version}: index {e.manifest.details['index']} over "
          f"{e.manifest.details['chunks']} chunks (no re-embedding)")


def _filters(args):
    from ..rag.retrieve import Filters

    return Filters(args.source, args.tag, args.kind)


def search(args) -> None:
    from ..rag.retrieve import Collection, retrieve

    col = Collection(args.name, registry())
    r = retrieve(col, args.question, args.k, args.hybrid, args.rerank, _filters(args))
    if args.json:
        print(json.dumps({"hits": [h.to_dict() for h in r.hits], "seconds": r.seconds}, indent=2))
        return
    for n, h in enumerate(r.hits, 1):
        print(f"[{n}] {h.score:.3f}  {_rel(h.where())}")
        print("    " + h.text[:300].replace("\n", "\n    "))


def ask(args) -> None:
    from .. import api
    from ..rag.answer import ask as do_ask
    from ..rag.retrieve import Collection

    col = Collection(args.name, registry())
    model = api.load(args.model, registry=col.registry)
    out = sys.stdout

    def stream(piece: str) -> None:
        if not args.json:
            out.write(piece)
            out.flush()

    a = do_ask(col, args.question, model, args.k, args.hybrid, args.rerank, _filters(args),
               args.threshold, on_text=stream, **options_from(args))
    if args.json:
        print(json.dumps(a.to_dict(), indent=2))
        return
    print()
    if args.show_context:
        print("\n--- what the model saw " + "-" * 40)
        for m in a.messages:
            print(f"[{m['role']}]\n{m['content']}\n")
        print("-" * 63)
    if a.removed_citations:
        print(f"removed citation(s) {', '.join(f'[{n}]' for n in a.removed_citations)}: not among "
              f"the {len(a.sources)} retrieved chunks", file=sys.stderr)
    if a.attributed:
        print(f"the model cited nothing; its answer's words are in "
              f"{', '.join(f'[{n}]' for n in a.attributed)} (attributed by oficina)")
    if a.below_threshold:
        print(f"(best match {max((s.score for s in a.sources), default=0):.2f} is under the "
              f"threshold {args.threshold}; the model was not asked)")
    print("\nsources:")
    used = set(a.citations) | set(a.attributed)
    for s in a.sources:
        where = [_rel(s.source)] + ([f"page {s.page}"] if s.page else []) + \
            ([f"§ {s.section}"] if s.section else []) + [f"chars {s.start}-{s.end}"]
        mark = "*" if s.n in used else " "
        flag = f"  flagged: {', '.join(s.flags)}" if s.flags else ""
        print(f" {mark}[{s.n}] {', '.join(where)}  (score {s.score:.3f}){flag}")
    t = a.timings
    print(f"\n{', '.join(f'{k} {v * 1000:.0f} ms' for k, v in t.items())}")


def eval_(args) -> None:
    from rich.table import Table

    from ..rag.evaluate import Setting, compare, read_questions

    questions = read_questions(args.questions)
    settings = [Setting(c, k, h, r, m, threshold=args.threshold)
                for c in args.names for k in (args.k or [4]) for h in _onoff(args.hybrid)
                for r in (args.rerank or [None]) for m in (args.model or [None])]
    if args.no_retrieval:
        settings += [Setting(args.names[0], model=m, retrieval=False) for m in args.model or []]
    results = compare(settings, questions, registry(), **options_from(args))
    if args.json:
        print(json.dumps([{"setting": r.setting.label, "metrics": r.metrics,
                           **({"items": r.items} if args.items else {})} for r in results], indent=2))
        return
    cols = []
    for r in results:
        cols += [k for k in r.metrics if k not in cols]
    t = Table(box=None, pad_edge=False)
    t.add_column("SETTING")
    for c in cols:
        t.add_column(c.upper(), justify="right")
    for r in results:
        t.add_row(r.setting.label, *[_fmt(r.metrics.get(c)) for c in cols])
    n_ans = sum(q.answerable for q in questions)
    console().print(t)
    print(f"{len(questions)} questions ({n_ans} answerable, {len(questions) - n_ans} not) from "
          f"{args.questions}")


def _onoff(v: str) -> list[bool]:
    return {"off": [False], "on": [True], "both": [False, True]}[v]


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) >= 0.001 or v == 0 else f"{v:.2e}"


def embed_files(args) -> None:
    """``oficina embed NAME --file F...``: one vector per file (or per line with --lines), JSONL."""
    from pathlib import Path

    from ..rag.embed import load_encoder

    enc = load_encoder(args.name, registry(), args.dtype)
    texts, names = [], []
    for f in args.file:
        p = Path(f)
        try:
            if args.lines:
                lines = p.read_text(encoding="utf-8").splitlines()
                items = [(f"{f}:{i}", t) for i, t in enumerate(lines, 1) if t.strip()]
            else:
                items = [(d.source, d.text) for d in read_document(p)]
        except (OSError, UnicodeDecodeError, DocumentError) as e:
            raise OficinaError(f"{f}: {e}") from None
        for name, text in items:
            if enc.count_tokens(text) > enc.info.window - 2:
                print(f"note: {name} is longer than {enc.info.name}'s window of "
                      f"{enc.info.window} tokens; its vector covers the start only "
                      f"(`oficina rag` chunks long files)", file=sys.stderr)
            names.append(name)
            texts.append(text)
    vecs = enc.encode(texts, unit=False)  # the model's own vectors
    lines = "".join(json.dumps({"source": n, "embedding": [round(float(x), 7) for x in v]}) + "\n"
                    for n, v in zip(names, vecs))
    if args.output:
        with atomic_write(args.output, "w") as out:
            out.write(lines)
        print(f"wrote {len(names)} vectors of {enc.info.dim} dims to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(lines)


def retrieval_flags(s) -> None:
    s.add_argument("--k", type=int, default=4, help="chunks to retrieve (default 4)")
    s.add_argument("--hybrid", action="store_true", help="fuse BM25 with the vector ranks (RRF)")
    s.add_argument("--rerank", metavar="MODEL", help="re-rank with this registry cross-encoder")
    s.add_argument("--source", help="only sources matching this glob (e.g. '*.pdf')")
    s.add_argument("--tag", help="only documents ingested with this tag")
    s.add_argument("--kind", help="only this document kind (md, html, pdf, txt, jsonl)")


def register(sub) -> None:
    rag = sub.add_parser("rag", help="answer from your documents: collections, ingest, ask, eval")
    rs = rag.add_subparsers(dest="rag_command", metavar="COMMAND")
    rag.set_defaults(func=lambda a: rag.print_help() or 2)

    s = rs.add_parser("create", help="make a collection (a registry item with versions)")
    s.add_argument("name")
    s.add_argument("--embed", default="minilm", help="registry encoder (default minilm)")
    s.add_argument("--chunk-tokens", type=int, default=200, help="chunk size in the encoder's tokens")
    s.add_argument("--overlap", type=int, default=40, help="tokens shared by neighbouring chunks")
    s.add_argument("--index", default="auto", choices=("auto", "flat", "hnsw", "ivf"),
                   help="auto: exact (flat) up to 50,000 chunks, HNSW above")
    s.set_defaults(func=create)

    s = rs.add_parser("ingest", help="read files and folders (.txt .md .html .pdf .jsonl) into a collection")
    s.add_argument("name")
    s.add_argument("paths", nargs="+")
    s.add_argument("--prune", action="store_true", help="remove documents whose files are gone")
    s.add_argument("--tag", action="append", help="tag these documents (filter with --tag)")
    s.add_argument("--max-file-mb", type=float, default=50, help="skip larger files (default 50)")
    s.set_defaults(func=ingest)

    s = rs.add_parser("list", aliases=["ls"], help="collections")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=list_)

    s = rs.add_parser("show", help="a collection: settings, documents, flagged chunks")
    s.add_argument("name")
    s.add_argument("--version", type=int)
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=show)

    s = rs.add_parser("rm", help="delete collections")
    s.add_argument("names", nargs="+")
    s.set_defaults(func=rm)

    s = rs.add_parser("history", help="versions of a collection")
    s.add_argument("name")
    s.set_defaults(func=history)

    s = rs.add_parser("rollback", help="point a collection back at an earlier version")
    s.add_argument("name")
    s.add_argument("--to", type=int)
    s.set_defaults(func=rollback)

    s = rs.add_parser("reindex", help="rebuild the index as another kind (no re-embedding)")
    s.add_argument("name")
    s.add_argument("kind", choices=("auto", "flat", "hnsw", "ivf"))
    s.set_defaults(func=reindex)

    _register_questions(rs)


def _register_questions(rs) -> None:
    """search, ask and eval: the commands that put questions to a collection."""
    s = rs.add_parser("search", help="the chunks a question retrieves, with scores")
    s.add_argument("name")
    s.add_argument("question")
    retrieval_flags(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=search)

    s = rs.add_parser("ask", help="answer a question from the collection, with checked citations")
    s.add_argument("name")
    s.add_argument("question")
    s.add_argument("--model", default="smollm2")
    retrieval_flags(s)
    s.add_argument("--threshold", type=float, default=0.30,
                   help="below this best cosine score: \"I don't know from these documents\"")
    s.add_argument("--show-context", action="store_true", help="print exactly what the model saw")
    s.add_argument("--json", action="store_true")
    option_flags(s)
    s.set_defaults(func=ask)

    s = rs.add_parser("eval", help="recall@k, MRR, nDCG@10, correctness, citations, IDK rate, latency")
    s.add_argument("names", nargs="+", metavar="name", help="collections (e.g. two chunk sizes)")
    s.add_argument("--questions", required=True, help='JSONL: {"question", "answer"?, "sources": [...]}')
    s.add_argument("--k", type=int, action="append", help="repeat to compare (default 4)")
    s.add_argument("--hybrid", choices=("off", "on", "both"), default="off")
    s.add_argument("--rerank", action="append", metavar="MODEL")
    s.add_argument("--model", action="append", help="answer with this model (repeat to compare)")
    s.add_argument("--no-retrieval", action="store_true",
                   help="also each model answering with no documents (the baseline)")
    s.add_argument("--threshold", type=float, default=0.30)
    s.add_argument("--items", action="store_true", help="with --json: every question's result")
    s.add_argument("--json", action="store_true")
    option_flags(s)
    s.set_defaults(func=eval_)
