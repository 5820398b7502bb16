"""The fast decoder (generation/fast) against transformers on tiny random models of every family it
supports, its GGUF readers against transformers' dequantization, and its runner protocol (batched
decode, prefix reuse, chunked prefill)."""

from __future__ import annotations

import pytest
import torch

import gguf_models
import tiny
from oficina.generation.fast.config import FastConfig
from oficina.generation.fast.load import from_gguf_file, from_state, load_packed, save_packed
from oficina.generation.fast.runner import FastRunner
from oficina.generation.hf_runner import TransformersRunner


def _fast(model, dtype=torch.float32, slots=4, ctx=256) -> FastRunner:
    cfg = FastConfig.from_hf(model.config)
    return FastRunner(from_state(cfg, model.state_dict(), dtype, slots, ctx))


@pytest.fixture(scope="module", params=tiny.DECODERS)
def pair(request):
    model = tiny.build_decoder(request.param)
    return model, _fast(model)


def _ids(n, seed=0, vocab=290):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def test_logits_equal_transformers_fp32(pair):
    model, fast = pair
    ids = _ids(40)  # longer than Gemma's tiny sliding window (8)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0]
    got = fast.dec.forward(torch.tensor([ids]), torch.tensor([0]), torch.tensor([0]), last_only=False)[0]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


_greedy = tiny.greedy


def test_greedy_64_tokens_equal_transformers(pair):
    model, fast = pair
    ids = _ids(12, seed=1)
    assert _greedy(fast, ids, 64) == _greedy(TransformersRunner(model, max_batch=1), ids, 64)


def test_batched_decode_equals_each_alone(pair):
    model, _ = pair
    fast = _fast(model)
    prompts = [_ids(n, seed=n) for n in (3, 17, 9, 30)]
    alone = [_greedy(fast, p, 12) for p in prompts]
    for s in range(4):  # no prefix to reuse: each slot starts empty
        fast._ids[s] = []
    slots, logits = [], []
    for p in prompts:
        slot, reused = fast.acquire(p)
        slots.append(slot)
        logits.append(fast.prefill(slot, p, reused))
    together = [[] for _ in prompts]
    step = torch.stack(logits)
    for _ in range(12):
        toks = [int(t) for t in step.argmax(-1)]
        for seq, t in zip(together, toks):
            seq.append(t)
        step = fast.decode(slots, toks)
    assert together == alone


def test_fill_many_packs_prompts_and_equals_each_alone(pair):
    """The server's batched prefill: several prompts (one of them continued from an earlier
    chunk) go through one pass, and their last ids then through one batched decode step; the
    logits equal transformers' for each prompt alone."""
    model, _ = pair
    fast = _fast(model)
    prompts = [_ids(n, seed=n) for n in (3, 17, 9, 30)]
    for s in range(4):
        fast._ids[s] = []
    fast.fill_many([(3, prompts[3][:10], 0), (0, prompts[0][:-1], 0)])
    fast.fill_many([(3, prompts[3][:-1], 10), (1, prompts[1][:-1], 0), (2, prompts[2][:-1], 0)])
    got = fast.decode([2, 0, 3, 1], [prompts[s][-1] for s in (2, 0, 3, 1)])
    with torch.no_grad():
        ref = torch.stack([model(torch.tensor([prompts[s]])).logits[0, -1] for s in (2, 0, 3, 1)])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_prefix_reuse_copies_the_cache_and_gives_the_same_logits(pair):
    model, _ = pair
    fast = _fast(model, slots=2)
    system = _ids(20, seed=5)
    a, b = system + _ids(5, seed=6), system + _ids(7, seed=7)
    slot, reused = fast.acquire(a)
    assert reused == 0
    fast.prefill(slot, a, reused)
    fast.release(slot)
    other, reused = fast.acquire(b)
    assert reused == len(system)
    got = fast.prefill(other, b, reused)
    with torch.no_grad():
        ref = model(torch.tensor([b])).logits[0, -1]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_chunked_prefill_equals_one_pass(pair):
    model, fast = pair
    ids = _ids(50, seed=3)
    fast.num_batch = 7
    try:
        slot, _ = fast.acquire([])
        fast._ids[slot] = []
        chunked = fast.prefill(slot, ids, 0)
        fast.release(slot)
    finally:
        fast.num_batch = 512
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(chunked, ref, atol=1e-4, rtol=0)


def test_score_is_log_softmax_of_the_next_token(pair):
    model, fast = pair
    ids = _ids(30, seed=4)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
    want = ref.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    got = fast.score(ids)
    torch.testing.assert_close(got.logprobs, want, atol=1e-4, rtol=0)
    assert torch.equal(got.greedy, ref.argmax(-1) == torch.tensor(ids[1:]))
    # a second continuation of the same context reuses its cache (chunks of 4 split both parts)
    fast.num_batch = 4
    try:
        again = fast.score(ids[:20] + ids[25:], start=20)
    finally:
        fast.num_batch = 512
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids[:20] + ids[25:]])).logits[0, 19:-1], -1)
    torch.testing.assert_close(again.logprobs, ref.gather(-1, torch.tensor(ids[25:])[:, None])[:, 0],
                               atol=1e-4, rtol=0)


# -- GGUF -> packed forms ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_exports(tmp_path_factory):
    from oficina.formats.gguf_export import export_gguf

    out = {}
    for family in ("llama", "gemma3_text", "qwen2"):
        folder = tmp_path_factory.mktemp(family)
        model, _ = gguf_models.build(family, folder / "src", width=256, layers=2)
        for ftype in ("F32", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M"):
            out[family, ftype] = (model, export_gguf(folder / "src", folder / f"{ftype}.gguf", dtype=ftype))
    return out


def _reference(path):
    """transformers' own reading of the GGUF file (dequantized to float32)."""
    from oficina.models.loader import load_folder

    return load_folder(path).model


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2"])
@pytest.mark.parametrize("ftype", ["F32", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M"])
def test_gguf_fp32_equals_transformers_and_packed_bf16_is_close(gguf_exports, family, ftype, tmp_path):
    _, path = gguf_exports[family, ftype]
    ref_model = _reference(path)
    cfg = FastConfig.from_hf(ref_model.config)
    ids = _ids(48, seed=2, vocab=cfg.vocab_size - 4)
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0]
    exact = from_gguf_file(cfg, path, torch.float32, 1, 128)
    got = exact.forward(torch.tensor([ids]), torch.tensor([0]), torch.tensor([0]), last_only=False)[0]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)  # q/k un-permuted, norms, types read right

    packed = from_gguf_file(cfg, path, torch.bfloat16, 1, 128)
    save_packed(packed, tmp_path / "p.safetensors")
    again = load_packed(cfg, tmp_path / "p.safetensors", 1, 128)
    lp = torch.log_softmax(ref, -1)
    for dec in (packed, again):
        q = torch.log_softmax(dec.forward(torch.tensor([ids]), torch.tensor([0]), torch.tensor([0]),
                                          last_only=False)[0], -1)
        kl = float((lp.exp() * (lp - q)).sum(-1).mean())
        assert kl < 2e-3, f"{family} {ftype}: mean KL {kl:.2e} of packed bf16 vs float32"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0", "Q5_1"])
def test_8_bit_block_types_keep_their_codes_in_two_int4_halves(qtype):
    """Q8_0 / Q5_0 / Q5_1 go into ``Int4Pair``: the dequantized weight is gguf-py's to the
    bf16 roundings of the block scale (2^-9 of |d*c| <= 2 max|w|) and zero (2^-9 of |8d+m| <=
    max|w|), and the one-row int4 kernel computes it."""
    import types

    import gguf
    import numpy as np

    from oficina.generation.fast.weights import Int4Pair, dequantize_rows, from_gguf

    t = gguf.GGMLQuantizationType[qtype]
    w = np.random.default_rng(0).standard_normal((48, 128)).astype(np.float32) * 0.05
    data = gguf.quants.quantize(w, t)
    tensor = types.SimpleNamespace(shape=(128, 48), tensor_type=t, data=data)
    form = from_gguf(tensor, torch.bfloat16)
    assert isinstance(form, Int4Pair)
    ref = dequantize_rows(data, t).reshape(48, 128)
    torch.testing.assert_close(form.dequantize(torch.float32), ref, rtol=0, atol=3 * 2 ** -9 * float(ref.abs().max()))
    x = torch.randn(1, 128).bfloat16()
    want = x.float() @ ref.t()
    assert float((form(x).float() - want).norm() / want.norm()) < 1e-2
