"""RAG benchmarks, side by side with the peers, on this machine's CPU.

    python bench/bench_rag.py embed     # MiniLM texts/s: oficina vs sentence-transformers encode, batch 64, fp32 + bf16, interleaved
    python bench/bench_rag.py ingest    # 10,000 chunks end to end (parse, chunk, embed, index): chunks/s
    python bench/bench_rag.py search    # p50 latency at 100k synthetic vectors, flat vs HNSW, HNSW recall@10
    python bench/bench_rag.py quality   # shipped set: recall@4 (vector, hybrid); smollm2 correctness with vs without retrieval

Real models come from the test registry (``OFICINA_TEST_HOME`` or ~/.cache/oficina-test-home).
Every result line is printed with the load average, because timings on a shared machine only
mean something as ratios against the peer measured in the same interleaved run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent.parent / "oficina" / "data" / "rag"


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def home() -> Path:
    return Path(os.environ.get("OFICINA_TEST_HOME") or Path.home() / ".cache" / "oficina-test-home")


def texts(n: int) -> list[str]:
    """Chunk-like texts of mixed length from the shipped documents' sentences."""
    from oficina.formats.documents import read_document

    sents = []
    for p in sorted((DATA / "docs").iterdir()):
        if p.suffix in (".md", ".html", ".pdf"):
            sents += [s.strip() for s in read_document(p)[0].text.replace("\n", " ").split(". ") if s.strip()]
    rng = np.random.default_rng(0)
    return [". ".join(rng.choice(sents, size=int(rng.integers(1, 9)))) for _ in range(n)]


def bench_embed(args) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    import oficina
    from oficina.rag.embed import Encoder
    from oficina.registry.registry import Registry

    torch.set_num_threads(args.threads)
    reg = Registry(home())
    data = texts(args.n)
    ours, peers = {}, {}
    for dt in ("fp32", "bf16"):
        ours[dt] = Encoder(oficina.load("minilm", registry=reg), dt, 64)
        st = SentenceTransformer(str(ours[dt].model.loaded.folder), device="cpu")
        peers[dt] = st.to(torch.bfloat16) if dt == "bf16" else st
    res = {(w, dt): [] for w in ("oficina", "st") for dt in ours}
    for _ in range(args.reps):
        for dt, enc in ours.items():  # interleaved: each round runs both, so load hits both
            t = time.perf_counter()
            enc.encode(data)
            res[("oficina", dt)].append(len(data) / (time.perf_counter() - t))
            t = time.perf_counter()
            peers[dt].encode(data, batch_size=64)
            res[("st", dt)].append(len(data) / (time.perf_counter() - t))
    print(f"MiniLM, {len(data)} texts, batch 64, {args.threads} thread(s), {args.reps} interleaved rounds, "
          f"load {load()}")
    print(f"{'dtype':6} {'oficina texts/s':>16} {'sentence-transformers':>22} {'ratio':>6}")
    for dt in ours:
        a, b = statistics.median(res[("oficina", dt)]), statistics.median(res[("st", dt)])
        print(f"{dt:6} {a:16.1f} {b:22.1f} {a / b:6.2f}")


def bench_ingest(args) -> None:
    from oficina.rag import collection as C
    from oficina.rag.embed import load_encoder
    from oficina.registry.registry import Registry

    enc = load_encoder("minilm", Registry(home()))
    rng = np.random.default_rng(1)
    words = " ".join(texts(400)).split()
    with tempfile.TemporaryDirectory() as d:
        docs = Path(d) / "docs"
        docs.mkdir()
        # each file: 10 sections of ~50 words -> about two chunks each at --chunk-tokens 64
        n_files = args.chunks // 20
        for i in range(n_files):
            parts = [f"## Part {j}\n\n" + " ".join(rng.choice(words, 50)) + "." for j in range(10)]
            (docs / f"doc{i:05d}.md").write_text(f"# Record {i}\n\n" + "\n\n".join(parts))
        reg = Registry(Path(d) / "home")
        C.create("bench", C.CollectionConfig("minilm", args.chunk_tokens, 8), reg, encoder=enc)
        t = time.perf_counter()
        rep = C.ingest("bench", [docs], registry=reg, encoder=enc)
        secs = time.perf_counter() - t
    print(f"ingest {n_files} .md files -> {rep.chunks} chunks of <= {args.chunk_tokens} tokens "
          f"(MiniLM fp32, {os.environ.get('OMP_NUM_THREADS', 'all')} threads): {secs:.1f} s, "
          f"{rep.chunks / secs:.1f} chunks/s; stages " +
          ", ".join(f"{k} {v:.1f} s" for k, v in rep.seconds.items()) + f"; load {load()}")


def bench_search(args) -> None:
    from oficina.rag import index

    rng = np.random.default_rng(2)
    dim, n = 384, args.vectors
    # Like sentence embeddings: topics (clusters) in a low-dimensional subspace (intrinsic
    # dimension 32) of the 384, plus a little noise. Uniform noise on the 384-sphere would be
    # the worst case for any graph index and unlike any text embedding.
    basis = np.linalg.qr(rng.normal(size=(dim, 32)))[0].T.astype(np.float32)  # [32, dim]
    centres = rng.normal(size=(256, 32)).astype(np.float32)
    z = centres[rng.integers(0, 256, n)] + 0.5 * rng.normal(size=(n, 32)).astype(np.float32)
    x = z @ basis + 0.05 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, args.queries)] + 0.05 * rng.normal(size=(args.queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    out = {}
    for kind in ("flat", "hnsw"):
        t = time.perf_counter()
        idx = index.build(kind, dim, ids, x)
        build = time.perf_counter() - t
        lat, found = [], []
        for row in q:
            t = time.perf_counter()
            _, got = index.search(idx, row[None], 10)
            lat.append(time.perf_counter() - t)
            found.append(got[0])
        out[kind] = (build, statistics.median(lat), np.array(found))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(out["hnsw"][2], out["flat"][2])])
    print(f"{n} vectors x {dim}, {args.queries} single queries, k=10, "
          f"{os.environ.get('OMP_NUM_THREADS', 'all')} threads, load {load()}")
    for kind, (build, p50, _) in out.items():
        print(f"{kind:5} build {build:6.1f} s  search p50 {p50 * 1000:7.3f} ms")
    print(f"hnsw recall@10 vs flat: {recall:.3f} (M={index.HNSW_M}, efSearch={index.HNSW_EF_SEARCH})")


def bench_quality(args) -> None:
    import oficina
    from oficina.rag import collection as C
    from oficina.rag import evaluate as E
    from oficina.rag.embed import load_encoder
    from oficina.registry.registry import Registry

    real = Registry(home())
    enc = load_encoder("minilm", real)
    qs = E.read_questions(DATA / "questions.jsonl")
    with tempfile.TemporaryDirectory() as d:
        reg = Registry(Path(d))
        C.create("glass", C.CollectionConfig("minilm"), reg, encoder=enc)
        C.ingest("glass", [DATA / "docs"], registry=reg, encoder=enc)
        for hybrid in (False, True):
            r = E.run(E.Setting("glass", 4, hybrid), qs, reg, encoder=enc)
            print(f"retrieval {'hybrid' if hybrid else 'vector'}: recall@4 {r.metrics['recall@4']:.3f}, "
                  f"MRR {r.metrics['mrr']:.3f}, nDCG@10 {r.metrics['ndcg@10']:.3f} "
                  f"({sum(q.answerable for q in qs)} answerable questions); load {load()}")
        if args.answers:
            ans = [q for q in qs if q.answerable][: args.answers]
            una = [q for q in qs if not q.answerable][: max(1, args.answers // 8)]
            models = {"smollm2": oficina.load("smollm2", registry=real)}
            for retrieval in (True, False):
                s = E.Setting("glass", args.k, not args.vector_only, model="smollm2",
                              retrieval=retrieval)
                t = time.perf_counter()
                r = E.run(s, ans + una, reg, models, encoder=enc, num_predict=args.num_predict)
                m = r.metrics
                cp = m.get("cite_precision")
                print(f"{s.label} (greedy, num_predict {args.num_predict}): correct {m['correct']:.3f}, ROUGE-L {m['rouge_l']:.3f}, "
                      f"citation precision {cp if cp is None else round(cp, 3)}, "
                      f"IDK on unanswerable {m['idk_unanswerable']:.3f}, on answerable "
                      f"{m['idk_answerable']:.3f} ({len(ans)} answerable + {len(una)} unanswerable; "
                      f"{time.perf_counter() - t:.0f} s; load {load()})")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("embed")
    s.add_argument("--n", type=int, default=512)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--threads", type=int, default=2)
    s.set_defaults(func=bench_embed)
    s = sub.add_parser("ingest")
    s.add_argument("--chunks", type=int, default=10_000)
    s.add_argument("--chunk-tokens", type=int, default=64)
    s.set_defaults(func=bench_ingest)
    s = sub.add_parser("search")
    s.add_argument("--vectors", type=int, default=100_000)
    s.add_argument("--queries", type=int, default=200)
    s.set_defaults(func=bench_search)
    s = sub.add_parser("quality")
    s.add_argument("--answers", type=int, default=0, help="answer this many questions with smollm2")
    s.add_argument("--k", type=int, default=4)
    s.add_argument("--num-predict", type=int, default=32, help="answer length bound (tokens)")
    s.add_argument("--vector-only", action="store_true", help="no BM25 fusion (default: hybrid)")
    s.set_defaults(func=bench_quality)
    args = p.parse_args()
    from oficina.report import Reporter, set_reporter

    set_reporter(Reporter(quiet=True))
    args.func(args)


if __name__ == "__main__":
    main()
