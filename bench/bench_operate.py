"""Operations on a real server (smollm2, uvicorn on loopback, streamed /api/chat requests):

1. **response cache**: latency of a hit (first request a miss, then hits), and whether the hit is
   byte-identical to the original answer (the streamed chunks and the non-streamed body text);
2. **overhead of metrics + cost + logging**: the time our hooks take inside each request (the
   ``before`` lookup and the ``finished`` observer, measured with perf_counter around them) as a
   share of the request's time; and, end to end, the same streamed requests against a server with
   the operations and one without, alternating so machine load hits both alike;
3. **prefix reuse**: time to first token over a 10-turn chat (each turn's prompt holds every turn
   before it) with the runner's prefix reuse, and with it off (every prompt prefilled from zero).

    python bench/bench_operate.py                     # everything, smollm2 from the test registry
    python bench/bench_operate.py --part prefix --turns 10

No assertion here: a report to read (tests never time anything).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx

QUESTION = "Explain in two sentences why the sky is blue."
TURNS = ["Tell me about Lisbon.", "What river runs through it?", "And which bridges cross it?",
         "What is the weather like in summer?", "Name a famous dish from there.",
         "How is it cooked?", "What do people drink with it?", "Which neighbourhood is the oldest?",
         "What music is typical there?", "Summarise our conversation in one sentence."]


def _home() -> Path:
    return Path(os.environ.get("OFICINA_TEST_HOME") or Path.home() / ".cache" / "oficina-test-home")


def _server(ops=None, runner_factory=None, slots: int = 4):
    from oficina.serve.app import create_app
    from oficina.serve.native import Server
    from oficina.serve.pool import Pool
    from servers import serving

    pool = Pool(_home(), slots=slots, **({"runner_factory": runner_factory} if runner_factory else {}))
    return serving(create_app(Server(pool), operations=ops))


_client = httpx.Client(timeout=600)   # one keep-alive client, as real clients use (a new httpx.Client
                                      # per call builds an SSL context: tens of ms that are not the server's)


def _stream(url: str, body: dict) -> tuple[float, float, list[str], dict]:
    """(seconds to first content, total seconds, pieces, final line) of one streamed chat."""
    t0 = time.perf_counter()
    first, pieces, final = None, [], {}
    with _client.stream("POST", url + "/api/chat", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.strip():
                continue
            d = json.loads(line)
            if d.get("done"):
                final = d
            elif d["message"]["content"]:
                first = first or time.perf_counter()
                pieces.append(d["message"]["content"])
    end = time.perf_counter()
    return (first or end) - t0, end - t0, pieces, final


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


# -- 1. the response cache -----------------------------------------------------------------------
def bench_cache(args, out):
    from servers import free_port, start_upstream, stop

    with tempfile.TemporaryDirectory() as tmp:
        # the server in its own process, as users run it: the client here shares no GIL with it
        port = free_port()
        proc = start_upstream(_home(), port, ops_home=Path(tmp), cache=True)
        url = f"http://127.0.0.1:{port}"
        try:
            body = {"model": args.model, "messages": [{"role": "user", "content": QUESTION}],
                    "options": {"temperature": 0, "num_predict": args.tokens}}
            miss_ttft, miss_total, pieces, final = _stream(url, body)
            streamed, plain, inside = [], [], []
            identical = True
            for _ in range(args.hits):
                _, total, again, fin = _stream(url, body)
                streamed.append(total)
                inside.append(fin["total_duration"] / 1e9)     # the server's own clock
                identical &= again == pieces and fin["eval_count"] == final["eval_count"]
                t0 = time.perf_counter()
                r = _client.post(url + "/api/chat", json={**body, "stream": False})
                plain.append(time.perf_counter() - t0)
                identical &= r.json()["message"]["content"] == "".join(pieces) \
                    and r.headers["x-oficina-cache"] == "hit"
        finally:
            stop(proc)
    out.append("## response cache (a server process on loopback, /api/chat)\n")
    out.append(f"original answer: {len(pieces)} chunks, {final['eval_count']} tokens, "
               f"{miss_total * 1000:.0f} ms (first token {miss_ttft * 1000:.0f} ms)")
    out.append(f"cache hit, streamed:     p50 {_pct(streamed, 50) * 1000:.1f} ms, p95 {_pct(streamed, 95) * 1000:.1f} ms "
               f"({args.hits} requests)")
    out.append(f"cache hit, not streamed: p50 {_pct(plain, 50) * 1000:.1f} ms, p95 {_pct(plain, 95) * 1000:.1f} ms")
    out.append(f"cache hit inside the server (total_duration of the final line): p50 {_pct(inside, 50) * 1000:.1f} ms, "
               f"p95 {_pct(inside, 95) * 1000:.1f} ms")
    out.append(f"byte-identical to the original (chunks, text, counts): {'yes' if identical else 'NO'}\n")


# -- 2. overhead ----------------------------------------------------------------------------------
def bench_overhead(args, out):
    from oficina.serve import cost
    from oficina.serve.operate import Operations

    with tempfile.TemporaryDirectory() as tmp:
        prices = Path(tmp) / "prices.toml"
        prices.write_text(f'[models."{args.model}"]\nprompt_per_1k = 0.01\noutput_per_1k = 0.02\n')
        ops = Operations(tmp, prices=cost.load(prices))
        spent = []
        for name in ("lookup", "finished"):
            fn = getattr(ops, name)

            def timed(*a, _fn=fn):
                t0 = time.perf_counter()
                try:
                    return _fn(*a)
                finally:
                    spent.append(time.perf_counter() - t0)

            setattr(ops, name, timed)
        with _server(ops) as on, _server(None) as off:
            body = {"model": args.model, "messages": [{"role": "user", "content": QUESTION}],
                    "options": {"temperature": 0.7, "num_predict": args.tokens}}   # not cacheable
            _stream(on, body), _stream(off, body)                                # load both
            spent.clear()
            t_on, t_off = [], []
            for i in range(args.repeat):
                for url, acc in ((on, t_on), (off, t_off)) if i % 2 == 0 else ((off, t_off), (on, t_on)):
                    acc.append(_stream(url, {**body, "options": {**body["options"], "seed": 1000 + i}})[1])
        entries = ops.log.count()
    hooks = sum(spent) / args.repeat
    out.append("## overhead of metrics, cost and logging (streamed /api/chat, not cacheable)\n")
    out.append(f"time in the operations' hooks: {hooks * 1000:.2f} ms per request = "
               f"{100 * hooks / statistics.mean(t_on):.3f}% of a {statistics.mean(t_on) * 1000:.0f} ms request "
               f"({entries} log entries written)")
    ratio = statistics.median(t_on) / statistics.median(t_off)
    out.append(f"end to end, median of {args.repeat} alternating requests: with {statistics.median(t_on) * 1000:.0f} ms, "
               f"without {statistics.median(t_off) * 1000:.0f} ms, ratio {ratio:.3f} "
               f"(noise on a shared CPU: spread {_spread(t_on):.0%} / {_spread(t_off):.0%})\n")


def _spread(xs):
    return (max(xs) - min(xs)) / statistics.median(xs)


# -- 3. prefix reuse --------------------------------------------------------------------------------
def bench_prefix(args, out):
    from oficina.serve.pool import open_runner

    def no_reuse(model, slots):
        """The server's own runner with prefix reuse off: every prompt is prefilled from zero."""
        r = open_runner(model, slots)
        acquire = r.acquire
        r.acquire = lambda ids=(): (acquire(())[0], 0)     # no ids to match: nothing reused
        return r

    # both servers up at once, turn by turn (so drifting machine load hits both alike); both get
    # the same conversation: the reuse server's answers are appended for the next turn
    rows = {"reuse": ([], []), "no reuse": ([], [])}
    with _server(None, slots=2) as on, _server(None, runner_factory=no_reuse, slots=2) as off:
        for url in (on, off):       # load the model (and its chat template's system prompt) first
            _stream(url, {"model": args.model, "messages": [{"role": "user", "content": "Hello."}],
                          "options": {"temperature": 0, "num_predict": 2}})
        messages = []
        for turn in TURNS[: args.turns]:
            messages.append({"role": "user", "content": turn})
            body = {"model": args.model, "messages": messages,
                    "options": {"temperature": 0, "num_predict": args.tokens}}
            ttft, _, pieces, final = _stream(on, body)
            rows["reuse"][0].append(ttft)
            rows["reuse"][1].append(final["prompt_eval_count"])
            ttft_off, _, _, final_off = _stream(off, body)
            rows["no reuse"][0].append(ttft_off)
            rows["no reuse"][1].append(final_off["prompt_eval_count"])
            messages.append({"role": "assistant", "content": "".join(pieces)})
    out.append(f"## prefix reuse: time to first token over a {args.turns}-turn chat (temperature 0, "
               f"{args.tokens}-token answers)\n")
    out.append("| turn | prompt tokens | TTFT with reuse | TTFT without |")
    out.append("|---:|---:|---:|---:|")
    for i in range(args.turns):
        out.append(f"| {i + 1} | {rows['reuse'][1][i]} | {rows['reuse'][0][i] * 1000:.0f} ms | "
                   f"{rows['no reuse'][0][i] * 1000:.0f} ms |")
    for label in rows:
        t = rows[label][0]
        out.append(f"\n{label}: first turn {t[0] * 1000:.0f} ms, last turn {t[-1] * 1000:.0f} ms "
                   f"(x{t[-1] / t[0]:.2f})")
    out.append("")


PARTS = {"cache": bench_cache, "overhead": bench_overhead, "prefix": bench_prefix}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--tokens", type=int, default=48, help="answer length (num_predict)")
    p.add_argument("--hits", type=int, default=30)
    p.add_argument("--repeat", type=int, default=10, help="requests per server in the overhead A/B")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    out = [f"# bench_operate ({args.model}, {args.threads} threads; load average before: "
           f"{Path('/proc/loadavg').read_text().split()[:3]})\n"]
    for name, fn in PARTS.items():
        if args.part in (name, "all"):
            fn(args, out)
            print("\n".join(out), flush=True)
            out = []
    print(f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
