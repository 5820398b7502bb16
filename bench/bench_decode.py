"""Decode and prefill speed of oficina's fast runner against llama.cpp (llama-cpp-python, the same
GGUF file) and transformers (fp32 and bf16, its own ``generate``), side by side.

    OFICINA_HOME=... python bench/bench_decode.py [--model smollm2] [--threads 2] [--repeat 3]

Measures, for each contender, in alternating rounds (every round runs every contender once, so a
change in machine load hits all alike) and reports medians:

- decode tok/s, batch 1: 128 new tokens (greedy) after a 32-token prompt, prompt time excluded;
- prefill tok/s of a 512-token prompt;
- aggregate decode tok/s with 8 sequences decoded together (oficina only: the others have no
  batched decode of independent sequences through these APIs);
- cold time to first token of ``oficina run MODEL hi`` in a fresh process (packed cache warm);
- resident set size (max RSS of a fresh process that loads the model and decodes).

Writes bench/bench_decode.txt (and prints it) with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import oficina  # noqa: E402
from oficina.report import Reporter, set_reporter  # noqa: E402

HERE = Path(__file__).parent
PROMPT, NEW, PREFILL, BATCH = 32, 128, 512, 8


def text_ids(tok, n: int) -> list[int]:
    text = (oficina.__path__[0] + "/data/eval/heldout.txt")
    ids = tok(Path(text).read_text(), add_special_tokens=False)["input_ids"]
    return (ids * (n // max(1, len(ids)) + 1))[:n]


# -- contenders: each returns {"decode": tok/s, "prefill": tok/s, ["batch": tok/s]} -------------

def ours(model):
    runner = model.runner

    def run():
        ids = text_ids(model.tokenizer, PREFILL)
        out = {}
        slot, _ = runner.acquire([])
        runner._ids[slot] = []
        t0 = time.perf_counter()
        runner.prefill(slot, ids, 0)
        out["prefill"] = PREFILL / (time.perf_counter() - t0)
        runner._ids[slot] = []
        logits = runner.prefill(slot, ids[:PROMPT], 0)
        t0 = time.perf_counter()
        for _ in range(NEW):
            logits = runner.decode([slot], [int(logits.argmax())])[0]
        out["decode"] = NEW / (time.perf_counter() - t0)
        runner.release(slot)
        if runner.capabilities.max_batch >= BATCH:
            slots = []
            for b in range(BATCH):
                s, _ = runner.acquire([])
                runner._ids[s] = []
                runner.prefill(s, ids[b:b + PROMPT - b], 0)   # different lengths
                slots.append(s)
            toks = [1] * BATCH
            n = NEW // 2
            t0 = time.perf_counter()
            for _ in range(n):
                toks = [int(t) for t in runner.decode(slots, toks).argmax(-1)]
            out["batch"] = n * BATCH / (time.perf_counter() - t0)
            for s in slots:
                runner.release(s)
        return out
    return run


def llamacpp(path: Path, threads: int):
    from oficina.quant.llamacpp import open_model

    llm = open_model(path, n_ctx=1024, threads=threads, logits_all=False)

    def run():
        import numpy as np

        tok_ids = llm.tokenize((Path(oficina.__path__[0]) / "data/eval/heldout.txt").read_bytes(), add_bos=False)
        ids = (tok_ids * (PREFILL // len(tok_ids) + 1))[:PREFILL]
        out = {}
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        out["prefill"] = PREFILL / (time.perf_counter() - t0)
        llm.reset()
        llm.eval(ids[:PROMPT])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(NEW):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out["decode"] = NEW / (time.perf_counter() - t0)
        return out
    return run


def transformers_generate(folder: Path, dtype, tokenizer):
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()

    def run():
        ids = torch.tensor([text_ids(tokenizer, PREFILL)])
        out = {}
        with torch.inference_mode():
            t0 = time.perf_counter()
            m(input_ids=ids, logits_to_keep=1)
            out["prefill"] = PREFILL / (time.perf_counter() - t0)
            prompt = ids[:, :PROMPT]
            t0 = time.perf_counter()
            m.generate(prompt, max_new_tokens=1, do_sample=False, pad_token_id=0)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            g = m.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)
            spent = time.perf_counter() - t0 - first
            out["decode"] = (g.shape[1] - PROMPT - 1) / spent
        return out
    return run


def cold_ttft(name: str, threads: int) -> tuple[float, float]:
    """(seconds to the first streamed piece, max RSS MB) of a fresh ``oficina run`` process."""
    code = (
        "import time,sys,resource;import oficina;"
        "m=oficina.load(sys.argv[1]);it=m.stream('hi',temperature=0,num_predict=8,num_thread=int(sys.argv[2]));"
        "next(it);print(time.time()-float(sys.argv[3]));list(it);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    out = subprocess.run([sys.executable, "-c", code, name, str(threads), repr(time.time())],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    t, rss = out.stdout.split()[-2:]
    return float(t), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_reporter(Reporter(quiet=True))
    load_before = open("/proc/loadavg").read().split()[:3]

    model = oficina.load(args.model, num_thread=args.threads, num_ctx=1024)
    model.max_batch = BATCH
    gguf = next(Path(model.loaded.source).glob("*.gguf"), None) if Path(model.loaded.source).is_dir() else None
    contenders = [("oficina fast", ours(model))]
    if gguf is not None:
        from oficina.quant.llamacpp import missing

        if missing() is None:
            contenders.append(("llama.cpp (same GGUF)", llamacpp(gguf, args.threads)))
    if not args.no_transformers:
        folder = model.loaded.hf_folder
        contenders.append(("transformers fp32", transformers_generate(folder, torch.float32, model.tokenizer)))
        contenders.append(("transformers bf16", transformers_generate(folder, torch.bfloat16, model.tokenizer)))

    results: dict[str, list[dict]] = {n: [] for n, _ in contenders}
    for _ in range(args.repeat):
        for name, fn in contenders:
            results[name].append(fn())
    ttft = [cold_ttft(args.model, args.threads) for _ in range(args.repeat)]
    load_after = open("/proc/loadavg").read().split()[:3]

    def med(name, key):
        vals = [r[key] for r in results[name] if key in r]
        return statistics.median(vals) if vals else None

    caps = model.runner.capabilities
    lines = [f"# bench_decode: {args.model}, {args.threads} threads, medians of {args.repeat} alternating rounds",
             f"# load average before {' '.join(load_before)}, after {' '.join(load_after)}",
             f"# oficina runner: {caps.note} ({caps.weights}; {caps.dtype})",
             f"# command: python bench/bench_decode.py --model {args.model} --threads {args.threads} --repeat {args.repeat}",
             "",
             "| contender | decode tok/s (b=1, 128 after 32) | prefill tok/s (512) | aggregate decode tok/s (8 seqs) |",
             "|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:,.1f}"
    for name, _ in contenders:
        lines.append(f"| {name} | {fmt(med(name, 'decode'))} | {fmt(med(name, 'prefill'))} | {fmt(med(name, 'batch'))} |")
    ours_d = med("oficina fast", "decode")
    lines.append("")
    for name, _ in contenders[1:]:
        d, p = med(name, "decode"), med(name, "prefill")
        lines.append(f"ratio oficina/{name}: decode {ours_d / d:.2f}x, prefill {med('oficina fast', 'prefill') / p:.2f}x")
    if med("oficina fast", "batch"):
        lines.append(f"aggregate decode at {BATCH} sequences / single-sequence decode: {med('oficina fast', 'batch') / ours_d:.2f}x")
    lines.append(f"cold `oficina.load + first token` (fresh process, packed cache warm): median "
                 f"{statistics.median(t for t, _ in ttft):.2f} s; max RSS {statistics.median(r for _, r in ttft):.0f} MB")
    if gguf is not None:
        lines.append(f"GGUF file: {gguf.stat().st_size / 1e6:.0f} MB")
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / ("bench_decode.txt" if args.model == "smollm2" else f"bench_decode-{args.model.replace(':', '-')}.txt")
    out.write_text(text)


if __name__ == "__main__":
    main()
