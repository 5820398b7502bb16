"""Where the packed forms should switch from their int kernel to dequantize + bf16 GEMM: for
SmolLM2's weight shapes (random codes, the real forms), the time of one product at M input rows
both ways, medians of repeated calls.

    python bench/bench_kernels.py [--threads 2]

The rows at which the GEMM path starts winning are ``INT4_DENSE_ROWS`` / ``INT8_DENSE_ROWS`` in
``oficina/generation/fast/weights.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

from oficina.generation.fast.weights import Int4, Int8

SHAPES = {"int4": [(960, 576), (576, 576), (3072, 576), (576, 1536)], "int8": [(960, 576), (3072, 576)]}
ROWS = (1, 8, 16, 32, 64, 96, 128, 192, 256)


def median_us(fn, n: int = 15) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e6


def make(kind: str, n: int, k: int):
    if kind == "int4":
        return Int4.from_codes(torch.randint(0, 16, (n, k)), torch.rand(n, k // 32) / 50, torch.randn(n, k // 32) / 50)
    return Int8.quantize(torch.randn(n, k))


def kernel(form, x):
    if isinstance(form, Int4):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, form.packed, 32, form.sz)
    return torch.ops.aten._weight_int8pack_mm(x, form.q, form.scale)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"# bench_kernels: {args.threads} threads; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
             "# summed over the shapes of each form: int kernel us / dequantize+GEMM us", "",
             "| rows | " + " | ".join(SHAPES) + " |", "|---" * (len(SHAPES) + 1) + "|"]
    forms = {kind: [make(kind, n, k) for n, k in shapes] for kind, shapes in SHAPES.items()}
    for m in ROWS:
        cells = []
        for fs in forms.values():
            a = b = 0.0
            for f in fs:
                x = torch.randn(m, f.shape[1], dtype=torch.bfloat16)
                a += median_us(lambda f=f, x=x: kernel(f, x))
                b += median_us(lambda f=f, x=x: F.linear(x, f.dequantize()))
            cells.append(f"{a:.0f} / {b:.0f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (Path(__file__).parent / "bench_kernels.txt").write_text(text)


if __name__ == "__main__":
    main()
