"""Time to score the same text (perplexity) and the same multiple-choice set with oficina (on
the runner it picks, the fast one for smollm2, and forced onto the transformers runner at fp32,
whose numbers are lm-eval's), lm-evaluation-harness (HFLM, the same torch model object) and the
transformers loop a user would write (Hugging Face's "Perplexity of fixed-length models"
recipe), on the same threads.

    OFICINA_HOME=... python bench/bench_eval.py [--model smollm2] [--threads 2] [--repeat 3]
        [--lm-eval-batches 1,8]

Writes the table to bench/bench_eval.txt (and prints it). Numbers vary with machine load: the
contenders run in turns, the minimum of ``--repeat`` rounds is kept, and CPU time is reported beside
wall time (steadier when other work shares the machine).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

import oficina
from oficina.evaluation import EvalConfig, Scorer, parse_tasks, run_tasks
from oficina.evaluation.multiple_choice import STYLES, MultipleChoice, requests
from oficina.report import Reporter, set_reporter

HERE = Path(__file__).parent


def race(contenders: list[tuple[str, object]], repeat: int) -> list[tuple[str, float, float, object]]:
    """Run the contenders in turns, ``repeat`` rounds, so that a change in machine load hits all
    of them alike; (name, min wall s, min CPU s, last result) each. CPU time (all threads of
    this process) is the steadier number on a shared machine."""
    wall: dict[str, list[float]] = {name: [] for name, _ in contenders}
    cpu: dict[str, list[float]] = {name: [] for name, _ in contenders}
    out: dict[str, object] = {}
    for _ in range(repeat):
        for name, fn in contenders:
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return [(name, min(wall[name]), min(cpu[name]), out[name]) for name, _ in contenders]


def hf_loop(model, text: str, window: int) -> float:
    """The recipe from the transformers docs (perplexity.md), stride = window: disjoint chunks,
    batch of one, mean loss per chunk weighted by its length. It does not score the first token."""
    lm, tok = model.torch_model, model.tokenizer
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    with torch.inference_mode():
        for begin in range(0, ids.size(1), window):
            end = min(begin + window, ids.size(1))
            trg_len = end - prev_end
            inp = ids[:, begin:end]
            target = inp.clone()
            target[:, :-trg_len] = -100
            loss = lm(inp, labels=target).loss
            n_valid = (target != -100).sum().item() - 1  # labels shift left by one inside the model
            nll_sum += loss.item() * n_valid
            n_tokens += n_valid
            prev_end = end
            if end == ids.size(1):
                break
    return math.exp(nll_sum / n_tokens)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--windows", default="2048,256")
    ap.add_argument("--lm-eval-batches", default="1,8", help="HFLM batch sizes to run")
    ap.add_argument("--out", default=str(HERE / "bench_eval.txt"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.lm_eval_batches.split(",")]
    set_reporter(Reporter(quiet=True))
    model = oficina.load(args.model)           # scores on the fast runner where it can
    os.environ["OFICINA_RUNNER"] = "transformers"
    fp32 = oficina.load(args.model)            # the same through transformers at fp32
    assert fp32.runner.capabilities.name == "transformers"   # chosen now, while the variable is set
    del os.environ["OFICINA_RUNNER"]
    runner = model.runner.capabilities
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    spec, = parse_tasks("ppl:builtin")
    text = spec.path.read_text()
    rows = []
    n_tokens = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    for window in (int(w) for w in args.windows.split(",")):
        cfg = EvalConfig(window=window)
        req = [Instance("loglikelihood_rolling", {}, (text,), 0)]
        contenders = [(name, lambda cfg=cfg, m=m: run_tasks(m, "m", [spec], cfg)[spec.name].metrics["ppl"].value)
                      for name, m in (("oficina", model), ("oficina transformers fp32", fp32))]
        for bs in batches:
            lm = HFLM(pretrained=model.torch_model, tokenizer=model.tokenizer, batch_size=bs,
                      max_length=window, device="cpu")
            contenders.append((f"lm-eval HFLM batch {bs}", lambda lm=lm, req=req: math.exp(
                -lm.loglikelihood_rolling(req, disable_tqdm=True)[0] / n_tokens)))
        contenders.append(("transformers loop", lambda window=window: hf_loop(model, text, window)))
        for name, t, m, ppl in race(contenders, args.repeat):
            note = f"ppl {ppl:.4f}" + (" (first token unscored)" if name == "transformers loop" else "")
            rows.append((f"ppl {n_tokens} tok, window {window}", name, t, m, note))

    items = MultipleChoice().load(parse_tasks("mc:builtin")[0].path)
    scorer, scorer32 = Scorer(model), Scorer(fp32)
    reqs, _ = requests(scorer, items, STYLES["cloze"], EvalConfig())
    pairs = []
    for it in items:
        ctx = STYLES["cloze"].prompt(it)
        pairs += [(ctx, " " + c) for c in it.choices]
    inst = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    contenders = [("oficina", lambda: sum(s.logprob for s in scorer(reqs))),
                  ("oficina transformers fp32", lambda: sum(s.logprob for s in scorer32(reqs)))]
    for bs in batches:
        lm = HFLM(pretrained=model.torch_model, tokenizer=model.tokenizer, batch_size=bs, device="cpu")
        contenders.append((f"lm-eval HFLM batch {bs}",
                           lambda lm=lm: sum(x[0] for x in lm.loglikelihood(inst, disable_tqdm=True))))
    for name, t, m, total in race(contenders, args.repeat):
        rows.append((f"mc {len(items)} items, {len(reqs)} choices", name, t, m, f"sum logprob {total:.3f}"))

    import lm_eval
    import transformers

    head = (f"# oficina eval bench: {args.model} ({model.info.parameters:,} parameters), "
            f"{args.threads} threads, min of {args.repeat} interleaved runs, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end\n"
            f"# oficina: {runner.note} ({runner.weights}; {runner.dtype}); lm-eval and the "
            f"transformers loop: the transformers model at fp32 (the GGUF dequantized)\n"
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
            f"{torch.__version__}, transformers {transformers.__version__}, lm-eval "
            f"{lm_eval.__version__}; text: oficina/data/eval/heldout.txt ({len(text.encode())} bytes)\n")
    lines = [head, (f"{'task':<30} {'scorer':<24} {'wall s':>7} {'CPU s':>7} {'wall ratio':>10} "
                    f"{'CPU ratio':>9}  result")]
    base: dict[str, tuple[float, float]] = {}
    for task, who, t, c, note in rows:
        bt, bc = base.setdefault(task, (t, c))
        lines.append(f"{task:<30} {who:<24} {t:>7.2f} {c:>7.2f} {t / bt:>9.2f}x {c / bc:>8.2f}x  {note}")
    out = "\n".join(lines) + "\n"
    print(out)
    Path(args.out).write_text(out)


if __name__ == "__main__":
    main()
