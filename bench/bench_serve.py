"""oficina serve vs llama-cpp-python's server, on loopback, same GGUF (smollm2 Q4_1) and threads.

N concurrent clients (default 1, 4, 8, 16) each stream chat completions through the official
``openai`` client; for every N both servers run back to back (interleaved, so machine load hits
both alike). Reported per server and N: aggregate generated tokens/s (all clients' tokens over
the wall time), time to first token p50/p95, inter-token time p50/p95. A "token" is one streamed
content chunk (both servers send one per decoded token; oficina holds back pieces that could be
the start of a stop text or half a UTF-8 character, which only merges chunks).

    python bench/bench_serve.py                      # writes bench/bench_serve.txt
    python bench/bench_serve.py --clients 1,8 --tokens 32

llama-cpp-python's server needs ``use_extra_bufts=False`` on these CPUs (it segfaults on the
first eval otherwise) and its settings have no field for it: it is started through a two-line
wrapper that patches llama.cpp's default model params (as ``oficina.quant.llamacpp.open_model``).
It serves one request at a time (its server holds a lock around the model); its default
``interrupt_requests=True`` would cut a running stream short whenever another request arrives, so
it runs with ``--interrupt_requests False`` (every client gets its whole answer, as from oficina).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Tell me about the ocean.", "Why is the sky blue?", "Write a short poem about bread.",
           "Explain what a CPU does.", "Give three tips for learning a language.", "What is a prime number?",
           "Describe a cat to someone who has never seen one.", "How do plants grow?"]

LLAMA_WRAPPER = """
import sys, llama_cpp.llama_cpp as ll
_orig = ll.llama_model_default_params
def _params():
    p = _orig()
    if hasattr(p, "use_extra_bufts"):
        p.use_extra_bufts = False
    return p
ll.llama_model_default_params = _params
import runpy
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early (exit {proc.returncode}); see {proc.args[0]} log")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def log(name: str):
    """Server logs go to a file: a pipe nobody reads would fill and block the server."""
    import tempfile

    return open(Path(tempfile.gettempdir()) / f"bench_serve_{name}.log", "w")


def gguf_path(home: Path) -> Path:
    from oficina.registry.registry import Registry

    reg = Registry(home)
    return sorted(reg.snapshot(reg.get("smollm2")).glob("*.gguf"))[0]


async def one_client(client, model: str, prompt: str, tokens: int, out: dict) -> None:
    t0 = time.perf_counter()
    stamps = []
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=tokens, temperature=0, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
    if stamps:
        out["ttft"].append(stamps[0] - t0)
        out["itl"].extend(b - a for a, b in zip(stamps, stamps[1:]))
        out["tokens"] += len(stamps)


async def run_level(base_url: str, model: str, n: int, tokens: int, limit: float) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=limit)
    out = {"ttft": [], "itl": [], "tokens": 0}
    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one_client(client, model, PROMPTS[i % len(PROMPTS)], tokens, out)
                                            for i in range(n))), limit)
    out["wall"] = time.perf_counter() - t0
    await client.close()
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=48, help="max_tokens per request")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=float, default=300, help="seconds allowed per level")
    ap.add_argument("--slots", type=int, default=8, help="oficina serve --slots (its default)")
    ap.add_argument("--skip-llama", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import real_home

    home = real_home()
    env = dict(os.environ, OFICINA_HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads),
               HF_HUB_OFFLINE="1")
    env.pop("OFICINA_HOST", None)
    procs = []
    try:
        p1 = free_port()
        # --no-cache: the levels repeat prompts at temperature 0, which the response cache would
        # replay instead of decoding (llama-cpp-python's server has no such cache)
        ofc = subprocess.Popen([sys.executable, "-m", "oficina", "serve", "--port", str(p1), "--slots", str(args.slots),
                                "--max-queue", "64", "--no-cache"], env=env, stdout=subprocess.DEVNULL, stderr=log("oficina"))
        procs.append(ofc)
        servers = [("oficina serve", f"http://127.0.0.1:{p1}/v1", "smollm2")]
        wait_up(f"http://127.0.0.1:{p1}/api/version", ofc)
        if not args.skip_llama:
            p2 = free_port()
            llm = subprocess.Popen([sys.executable, "-c", LLAMA_WRAPPER, "--model", str(gguf_path(home)),
                                    "--host", "127.0.0.1", "--port", str(p2), "--n_threads", str(args.threads),
                                    "--n_threads_batch", str(args.threads), "--n_ctx", "4096",
                                    "--model_alias", "smollm2", "--interrupt_requests", "False"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=log("llama"))
            procs.append(llm)
            servers.append(("llama-cpp-python server", f"http://127.0.0.1:{p2}/v1", "smollm2"))
            wait_up(f"http://127.0.0.1:{p2}/v1/models", llm)
        for name, url, model in servers:                       # warm up: load, first prefill
            asyncio.run(run_level(url, model, 1, 4, args.limit))
        rows = []
        for n in levels:
            for name, url, model in servers:
                try:
                    r = asyncio.run(run_level(url, model, n, args.tokens, args.limit))
                except asyncio.TimeoutError:
                    rows.append((name, n, None))
                    continue
                rows.append((name, n, r))
                print(f"{name:<24} clients {n:>2}: {r['tokens'] / r['wall']:6.1f} tok/s", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    lines = [f"streaming chat, smollm2 Q4_1 GGUF, {args.tokens} max tokens per request, {args.threads} threads, "
             f"greedy, oficina --slots {args.slots}; load average at the end {load} (2 shared cores)",
             f"{'server':<26} {'clients':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8}"]
    for name, n, r in rows:
        if r is None:
            lines.append(f"{name:<26} {n:>7}   timed out after {args.limit:.0f} s")
            continue
        lines.append(f"{name:<26} {n:>7} {r['tokens'] / r['wall']:>7.1f} {pct(r['ttft'], .5):>8.2f}s "
                     f"{pct(r['ttft'], .95):>8.2f}s {pct(r['itl'], .5) * 1000:>6.0f}ms {pct(r['itl'], .95) * 1000:>6.0f}ms")
    text = "\n".join(lines)
    print(text)
    (Path(__file__).with_suffix(".txt")).write_text(text + "\n")


if __name__ == "__main__":
    main()
