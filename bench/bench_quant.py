"""Our GGUF quantization against llama.cpp's, on the same file.

    python bench/bench_quant.py [MODEL] [--types Q4_K_M,Q6_K] [--out bench/bench_quant.txt]

For each file type: oficina exports the model (``export_gguf``), llama.cpp quantizes oficina's F32
export of the same model (``llama_model_quantize``, as llama-quantize does), and the two files
are compared tensor by tensor (GGML type and bytes) and by quality against the float model:
mean KL divergence of next-token distributions and top-1 agreement over the shipped held-out
text, both files' weights run in the same float32 torch model (``load_gguf_weights``). Also
times both quantizers. Needs llama-cpp-python (the ``llamacpp`` extra). MODEL is a registry name
or an HF folder (default: smollm2).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

import oficina
from oficina.evaluation.scoring import DEFAULT_WINDOW, rolling_windows
from oficina.evaluation.tasks import builtin_path
from oficina.formats.ggml.mixes import FILE_TYPES
from oficina.formats.gguf_export import export_gguf, load_gguf_weights
from oficina.quant import llamacpp
from oficina.quant.report import _compare, _Logprobs

DEFAULT = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
           "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"]


def same_tensors(a: Path, b: Path) -> tuple[int, int, list[str]]:
    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    differ = [n for n in ta if n not in tb or ta[n].tensor_type != tb[n].tensor_type
              or not np.array_equal(np.asarray(ta[n].data).view(np.uint8), np.asarray(tb[n].data).view(np.uint8))]
    return len(ta) - len(differ), len(ta), differ


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="smollm2")
    ap.add_argument("--types", default=",".join(DEFAULT))
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args()
    if (why := llamacpp.missing()):
        print(f"skipped: {why}")
        return 0
    model = oficina.load(args.model)
    folder = Path(model.loaded.folder)
    tok = model.tokenizer
    tokens = tok(builtin_path("heldout.txt").read_text(), add_special_tokens=False)["input_ids"]
    windows = rolling_windows(tokens, tok.bos_token_id, DEFAULT_WINDOW, DEFAULT_WINDOW)
    runner, targets = _Logprobs(windows, DEFAULT_WINDOW), [c for _, c in windows]
    ref = runner.run(model.torch_model)
    scratch = copy.deepcopy(model.torch_model)

    lines = [f"# oficina vs llama.cpp quantizer on {args.model} ({len(tokens)} tokens of heldout.txt)",
             "| type | tensors identical | oficina KL | llama.cpp KL | oficina top-1 | llama.cpp top-1 | oficina s | llama.cpp s |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        f32 = export_gguf(folder, tmp / "f32.gguf", dtype="F32")
        for name in [t.strip().upper() for t in args.types.split(",") if t.strip()]:
            if name not in FILE_TYPES:
                print(f"unknown type {name}", file=sys.stderr)
                return 2
            t0 = time.perf_counter()
            ours = export_gguf(folder, tmp / "ours.gguf", dtype=name)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            theirs = llamacpp.quantize_file(f32, tmp / "theirs.gguf", name)
            t_theirs = time.perf_counter() - t0
            same, total, differ = same_tensors(ours, theirs)
            _, kl_o, top_o = _compare(ref, runner.run(load_gguf_weights(ours, scratch)), targets)
            _, kl_t, top_t = _compare(ref, runner.run(load_gguf_weights(theirs, scratch)), targets)
            line = (f"| {name} | {same}/{total} | {kl_o:.5f} | {kl_t:.5f} | {100 * top_o:.1f}% | {100 * top_t:.1f}% "
                    f"| {t_ours:.1f} | {t_theirs:.1f} |")
            if differ:
                line += f" differ: {', '.join(differ[:3])}"
            lines.append(line)
            print(line, flush=True)
    lines.append("")
    lines.append("oficina s: export from the HF folder (read, quantize, write); llama.cpp s: "
                 "llama_model_quantize from oficina's F32 GGUF (2 threads). One shared 2-core machine.")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
