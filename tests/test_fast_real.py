"""The fast runner on the real catalogue models: greedy answers, and its next-token
distributions against llama.cpp's on the same GGUF file (skipped, with the reason, where
llama-cpp-python is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oficina.quant import llamacpp

HELDOUT = Path(__file__).parent.parent / "oficina" / "data" / "eval" / "heldout.txt"


@pytest.fixture(scope="module")
def gemma(real_registry):
    import oficina

    return oficina.load("gemma3:270m", registry=real_registry)


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_greedy_answer_through_the_fast_runner(request, name):
    model = request.getfixturevalue(name)
    assert model.runner.capabilities.name == "fast", model.runner.capabilities.note
    answer = model.generate("What is the capital of France? Answer in one word.", temperature=0,
                            num_predict=16)
    assert "Paris" in answer
    # the same ids again: the whole prompt but its last token comes from the cached prefix
    model.generate("What is the capital of France? Answer in one word.", temperature=0, num_predict=2)
    assert model.last_stats.reused_tokens >= model.last_stats.prompt_tokens - 1


@pytest.mark.skipif(llamacpp.missing() is not None, reason=str(llamacpp.missing()))
@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_next_token_distributions_match_llama_cpp(request, name):
    """Mean KL(llama.cpp || fast) and top-1 agreement over the shipped held-out text. The bounds
    are what the bf16 kernels reach (README: the issue's goal is KL <= 0.001, top-1 >= 99%;
    llama.cpp's own distance to a float32 reference is of the same size)."""
    import numpy as np

    model = request.getfixturevalue(name)
    runner = model.runner
    path = next(Path(model.loaded.source).glob("*.gguf"))
    ids = model.encode(HELDOUT.read_text())[:256]
    llm = llamacpp.open_model(path, n_ctx=512, threads=2, logits_all=True)
    try:
        llm.eval(ids)
        theirs = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
    finally:
        llm.close()
    slot, _ = runner.acquire([])
    runner._ids[slot] = []
    ours = runner.dec.forward(torch.tensor([ids]), torch.tensor([slot]), torch.tensor([0]), last_only=False)[0]
    runner._ids[slot] = []
    runner.release(slot)
    p, q = torch.log_softmax(theirs, -1), torch.log_softmax(ours, -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    top1 = float((theirs.argmax(-1) == ours.argmax(-1)).float().mean())
    print(f"{name}: mean KL {kl:.5f}, top-1 {top1:.3f}")
    assert kl < 0.02 and top1 > 0.9


def test_packed_bf16_is_close_to_the_exact_float32_reference(smollm2):
    """The packed bf16 runner against the float32 decoder on the same GGUF weights dequantized
    exactly (bench/quality_llamacpp.py; docs/engine.md measured KL 0.0008, top-1 98.4%; it was
    0.0019 while the Q8_0 output table was re-quantized to int8, which this bound refuses)."""
    import json

    from oficina.generation.fast.config import FastConfig
    from oficina.generation.fast.load import from_gguf_file

    path = next(Path(smollm2.loaded.source).glob("*.gguf"))
    cfg = FastConfig.from_hf(json.loads((smollm2.loaded.hf_folder / "config.json").read_text()))
    ids = smollm2.encode(HELDOUT.read_text())[:256]
    run = lambda dec: dec.forward(torch.tensor([ids]), torch.tensor([0]), torch.tensor([0]), last_only=False)[0]
    ref = run(from_gguf_file(cfg, path, torch.float32, 1, len(ids)))
    ours = run(from_gguf_file(cfg, path, torch.bfloat16, 1, len(ids)))
    p, q = torch.log_softmax(ref, -1), torch.log_softmax(ours, -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    top1 = float((ref.argmax(-1) == ours.argmax(-1)).float().mean())
    assert kl < 0.0015 and top1 > 0.96, f"mean KL {kl:.5f}, top-1 {top1:.3f}"


def test_served_prefill_is_batch_invariant(real_registry):
    """With the server's dense prefill weights (``prepare_serving``), prompts filled together
    leave the very same cache bits as each filled alone, and their first logits are equal: so a
    greedy answer does not depend on what else the server was prefilling (a plain GEMM over all
    rows picks its summation order by the row count and changed these caches)."""
    import oficina

    model = oficina.load("smollm2", registry=real_registry)
    model.max_batch = 4
    runner = model.runner
    assert runner.prepare_serving() > 0
    prompts = [model.encode(q) for q in ("Tell me about the ocean.", "Why is the sky blue? " * 20,
                                         "Write a short poem about bread.", "How do plants grow?")]
    for s, p in enumerate(prompts):
        runner._ids[s] = []
        runner.fill_many([(s, p[:-1], 0)])
    first = runner.decode([0, 1, 2, 3], [p[-1] for p in prompts])
    alone = [t.clone() for t in runner.dec.k + runner.dec.v]
    for s in range(4):
        runner._ids[s] = []
    runner.fill_many([(s, p[:-1], 0) for s, p in enumerate(prompts)])      # 2 blocks of rows
    assert torch.equal(runner.decode([0, 1, 2, 3], [p[-1] for p in prompts]), first)
    assert all(torch.equal(a, b) for a, b in zip(alone, runner.dec.k + runner.dec.v))
