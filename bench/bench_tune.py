"""LoRA training throughput and memory: oficina's loop against the peer a user would pick
instead, transformers' ``Trainer`` with a peft ``LoraConfig`` -- same model, same token ids and
labels (loss on the answers only), same LoRA settings, batch size, learning rate schedule,
epochs and precision.

Each run is a fresh process, so its peak resident memory (``ru_maxrss``, model load included
for both) is its own; runs alternate oficina/peer so drifting machine load hits both alike.
Throughput counts the same real (non-padding) tokens on both sides, divided by the wall time of
the training call (``tune``'s loop / ``Trainer.train()``), overheads included.

    python bench/bench_tune.py                      # smollm2, the Tavrenna facts, fp32 and bf16
    python bench/bench_tune.py --precision fp32 --repeat 3 --limit 64

No assertion here: a report to read (tests never time anything).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "oficina" / "data" / "tune" / "tavrenna_train.jsonl"


def _examples(args, tokenizer):
    from oficina.tuning import data, tasks

    ds = data.read(args.data)
    ex = tasks.encode(ds, tasks.TASKS["causal"], tasks.Context(tokenizer, args.max_length))
    return ex[: args.limit] if args.limit else ex


def worker_oficina(args) -> dict:
    from oficina.tuning import TuneConfig, run

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        # the same records as the peer gets (the first --limit of the file)
        lines = Path(args.data).read_text().splitlines()[: args.limit or None]
        data.write_text("\n".join(lines) + "\n")
        cfg = TuneConfig(base=args.model, method="lora", data=str(data), epochs=args.epochs,
                         batch_size=args.batch_size, max_length=args.max_length, learning_rate=args.lr,
                         warmup_steps=args.warmup, precision=args.precision, val_split=0.0,
                         forgetting=False, run_dir=str(Path(tmp) / "run"), seed=0,
                         options={"r": args.r, "alpha": 2 * args.r, "dropout": 0.05,
                                  "target_modules": ["all-linear"]})
        c0 = _cpu()
        r = run.tune(cfg)
        cpu = _cpu() - c0
    losses = [h["loss"] for h in r.loop.history]  # Trainer's training_loss is the mean per step
    return {"tokens": r.loop.tokens, "wall": r.loop.wall_seconds, "step_seconds": r.loop.seconds,
            "cpu": cpu, "loss": sum(losses) / len(losses), "steps": r.loop.steps}


def worker_peer(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    # the same Hugging Face folder oficina trains from (the GGUF converted once, fp32)
    tok = AutoTokenizer.from_pretrained(args.folder)
    ex = _examples(args, tok)
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=args.r, lora_alpha=2 * args.r,
                                             lora_dropout=0.05, target_modules="all-linear"))
    dataset = [{"input_ids": e.ids, "attention_mask": [1] * len(e.ids), "labels": e.target} for e in ex]
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
            learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=args.warmup,
            weight_decay=0.0, max_grad_norm=1.0, logging_steps=10, save_strategy="no", report_to=[],
            bf16=args.precision == "bf16", use_cpu=not torch.cuda.is_available(), seed=0,
            dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=dataset,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
        t0, c0 = time.perf_counter(), _cpu()
        out = trainer.train()
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    tokens = args.epochs * sum(len(e.ids) for e in ex)
    return {"tokens": tokens, "wall": wall, "cpu": cpu, "loss": out.training_loss, "steps": out.global_step}


def _cpu() -> float:
    """CPU seconds this process has used: on a shared machine, less disturbed by other load than
    wall time (which also counts waiting for a core)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _child(kind: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--limit", type=int, default=0, help="use the first N records")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--worker", choices=("oficina", "peer"))
    p.add_argument("--folder", help=argparse.SUPPRESS)  # set by the parent for the peer
    args = p.parse_args()
    if args.worker:
        result = (worker_oficina if args.worker == "oficina" else worker_peer)(args)
        result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print("RESULT " + json.dumps(result))
        return
    import peft
    import torch
    import transformers

    from oficina.registry.registry import Registry
    from oficina.tuning import session

    base = session.open_base(args.model, Registry())  # converts a GGUF model once, before timing
    common = ["--folder", str(base.folder), "--model", args.model, "--data", args.data, "--limit", str(args.limit), "--epochs",
              str(args.epochs), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
              "--lr", str(args.lr), "--warmup", str(args.warmup), "--r", str(args.r)]
    print(f"# LoRA r={args.r} all-linear on {args.model}, {args.data.split('/')[-1]}"
          f"{f' (first {args.limit})' if args.limit else ''}, {args.epochs} epoch(s), batch {args.batch_size}, "
          f"max_length {args.max_length}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"{'precision':<9} {'run':<8} {'tokens/s':>9} {'wall s':>8} {'tok/CPU-s':>9} {'peak RSS':>10} "
          f"{'load avg':>8} {'mean loss':>9}")
    for precision in args.precision.split(","):
        runs = {"oficina": [], "peer": []}
        for i in range(args.repeat):
            order = ("oficina", "peer") if i % 2 == 0 else ("peer", "oficina")
            for kind in order:
                r = _child(kind, common + ["--precision", precision])
                runs[kind].append(r)
                if runs["oficina"] and runs["peer"]:
                    assert runs["oficina"][-1]["tokens"] == runs["peer"][-1]["tokens"], "token counts differ"
                print(f"{precision:<9} {kind:<8} {r['tokens'] / r['wall']:>9.1f} {r['wall']:>8.1f} "
                      f"{r['tokens'] / r['cpu']:>9.1f} {r['peak_rss'] / 1e6:>8.0f}MB {os.getloadavg()[0]:>8.1f} "
                      f"{r['loss']:>9.4f}",
                      flush=True)
        med = {k: (statistics.median(x["tokens"] / x["wall"] for x in v),
                   statistics.median(x["tokens"] / x["cpu"] for x in v),
                   statistics.median(x["peak_rss"] for x in v)) for k, v in runs.items()}
        o, q = med["oficina"], med["peer"]
        print(f"{precision:<9} ratio    oficina/peer: tokens/s {o[0] / q[0]:.2f}x, tokens/CPU-s "
              f"{o[1] / q[1]:.2f}x, peak RSS {o[2] / q[2]:.2f}x (medians of {args.repeat})", flush=True)


if __name__ == "__main__":
    main()
