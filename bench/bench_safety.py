"""Guard latency per 1,000 characters, interleaved with a peer, on the held-out texts.

    OFICINA_HOME=... python bench/bench_safety.py [--rounds 5]

Rounds alternate pii, rules (examples/safety.rules), content, and the peer for content: a bare
MiniLM forward (sentence-transformers' encode) over the same pieces, which is the floor for any
MiniLM classifier. Prints medians and the load average before and after (shared machines:
read the ratio, not the absolute time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pieces() -> list[str]:
    texts = [json.loads(line)["text"] for name in ("content_heldout.jsonl", "pii_heldout.jsonl")
             for line in (ROOT / "oficina/data/safety" / name).read_text().splitlines() if line.strip()]
    out, cur = [], ""
    for t in texts:
        cur = f"{cur} {t}" if cur else t
        if len(cur) >= 1000:
            out.append(cur)
            cur = ""
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from oficina.registry.registry import Registry
    from oficina.safety import get_guard

    ps = pieces()
    chars = sum(len(p) for p in ps)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    guards = {"pii": get_guard("pii"), "rules": get_guard(f"rules={ROOT / 'examples/safety.rules'}"),
              "content": get_guard("content")}
    from sentence_transformers import SentenceTransformer

    reg = Registry()
    st = SentenceTransformer(str(reg.snapshot(reg.get("minilm"))), device="cpu")
    runs = {k: [] for k in [*guards, "minilm encode (peer)"]}
    calls = {**{k: g.check for k, g in guards.items()},
             "minilm encode (peer)": lambda p: st.encode([p], batch_size=8)}
    for f in calls.values():
        f(ps[0])  # warm-up
    for _ in range(args.rounds):
        for name, f in calls.items():
            t0 = time.perf_counter()
            for p in ps:
                f(p)
            runs[name].append((time.perf_counter() - t0) * 1000 * 1000 / chars)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    peer = statistics.median(runs["minilm encode (peer)"])
    print(f"{len(ps)} pieces, {chars:,} characters, {args.rounds} rounds; "
          f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    print(f"{'guard':<22} {'ms / 1,000 chars':>17} {'vs MiniLM encode':>17}")
    for name, xs in runs.items():
        m = statistics.median(xs)
        print(f"{name:<22} {m:>17.2f} {m / peer:>16.2f}x")


if __name__ == "__main__":
    main()
