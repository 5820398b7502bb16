"""Whose error is it? Next-token distributions on the shipped held-out text, three ways:

- ``reference``: the fast decoder at float32 on the GGUF weights dequantized exactly (it equals
  transformers' reading of the same file within 1e-4, tests/test_fast.py);
- ``fast bf16``: what ``oficina run`` uses (packed int4/int8 forms, bf16 activations), both as
  a prefill (one chunk: dequantize + bf16 GEMM) and decoding one token at a time (the int
  kernels);
- ``llama.cpp``: llama-cpp-python on the same file (it quantizes activations to 8-bit blocks);

plus ablations that each change one thing of ``fast bf16`` so the table says where its distance
comes from. Every row: mean KL(row's reference || row) in nats and top-1 agreement.

    OFICINA_HOME=... python bench/quality_llamacpp.py [--model smollm2] [--tokens 256]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

HELDOUT = Path(__file__).parent.parent / "oficina" / "data" / "eval" / "heldout.txt"


def compare(p_logits: torch.Tensor, q_logits: torch.Tensor) -> tuple[float, float]:
    p, q = torch.log_softmax(p_logits.float(), -1), torch.log_softmax(q_logits.float(), -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    return kl, float((p.argmax(-1) == q.argmax(-1)).float().mean())


def run(dec, ids: list[int], decode: bool = False) -> torch.Tensor:
    """Logits [T, V] for every position: one prefill chunk, or one token at a time."""
    if not decode:
        return dec.forward(torch.tensor([ids]), torch.tensor([0]), torch.tensor([0]), last_only=False)[0]
    return torch.stack([dec.forward(torch.tensor([[t]]), torch.tensor([0]), torch.tensor([i]))[0]
                        for i, t in enumerate(ids)])


def hybrid(base, layers_from=None, output_from=None, dtype=None):
    """``base`` with its linear layers and/or output projection taken from another decoder."""
    from oficina.generation.fast.model import Decoder

    return Decoder(base.cfg, base.embed, (layers_from or base).layers, base.norm,
                   (output_from or base).output, dtype or base.dtype, 1, base.context)


def dense_bf16(dec):
    """``dec``'s exact float32 weights as dense bf16 forms (no int codes, no re-quantizing)."""
    from oficina.generation.fast.weights import Dense, Form

    layers = [{k: Dense(v.w.to(torch.bfloat16)) if isinstance(v, Form) else v for k, v in p.items()}
              for p in dec.layers]
    out = Dense(dec.output.w.to(torch.bfloat16))
    from oficina.generation.fast.model import Decoder

    return Decoder(dec.cfg, dec.embed, layers, dec.norm, out, torch.bfloat16, 1, dec.context)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import json

    import numpy as np

    import oficina
    from oficina.generation.fast.config import FastConfig
    from oficina.generation.fast.load import from_gguf_file
    from oficina.quant import llamacpp

    model = oficina.load(args.model)
    path = next(Path(model.loaded.source).glob("*.gguf"))
    cfg = FastConfig.from_hf(json.loads((model.loaded.hf_folder / "config.json").read_text()))
    ids = model.encode(HELDOUT.read_text())[:args.tokens]
    ctx = len(ids) + 1
    with torch.inference_mode():
        ref_dec = from_gguf_file(cfg, path, torch.float32, 1, ctx)
        fast = from_gguf_file(cfg, path, torch.bfloat16, 1, ctx)
        ref = run(ref_dec, ids)
        rows = {
            "fast bf16, prefill": run(fast, ids),
            "fast bf16, decode (int kernels)": run(fast, ids, decode=True),
            "  ablation: output projection dense bf16": run(
                hybrid(fast, output_from=dense_bf16(ref_dec)), ids),
            "  ablation: packed weights, float32 activations": run(hybrid(fast, dtype=torch.float32), ids),
            "  ablation: exact weights as dense bf16, bf16 activations": run(dense_bf16(ref_dec), ids),
        }
        del ref_dec
    llm = llamacpp.open_model(path, n_ctx=max(512, ctx), threads=args.threads, logits_all=True)
    try:
        llm.eval(ids)
        cpp = torch.from_numpy(np.array(llm.scores[:len(ids)], dtype=np.float32))
    finally:
        llm.close()
    load = os.getloadavg()
    print(f"# {args.model} ({path.name}: {model.info.file_type}), {len(ids)} tokens of heldout.txt, "
          f"{args.threads} threads, load average {load[0]:.2f}")
    print("| contender | vs reference: mean KL | top-1 | vs llama.cpp: mean KL | top-1 |")
    print("|---|---|---|---|---|")
    kl, top = compare(ref, cpp)
    print(f"| llama.cpp | {kl:.5f} | {top:.1%} | - | - |")
    for name, logits in rows.items():
        a, b = compare(ref, logits)
        c, d = compare(cpp, logits)
        print(f"| {name} | {a:.5f} | {b:.1%} | {c:.5f} | {d:.1%} |")


if __name__ == "__main__":
    main()
