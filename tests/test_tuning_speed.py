"""The two things the tuning run does for speed must not change what is learned: the CPU dropout
draws the same distribution as ``nn.Dropout``, and bf16 storage of frozen weights gives the same
numbers as autocast casting them every step, with the exact fp32 weights back afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import tiny
from oficina.tuning import TuneConfig, dropout, frozen, loop, lora, run, tasks


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_distribution(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(1_000_000, dtype=dtype)
    y = dropout.Dropout(p)(x)
    dropped = float((y == 0).float().mean())
    sd = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(dropped - p) < 5 * sd + 1 / 65536
    kept = y[y != 0]
    assert torch.allclose(kept.float(), torch.full_like(kept.float(), 1 / (1 - p)), rtol=1e-2)
    assert abs(float(y.float().mean()) - 1) < 0.01  # expectation preserved


def test_dropout_lanes_are_independent():
    # neighbouring elements come from the same 64-bit word: their masks must not be correlated
    torch.manual_seed(1)
    m = dropout.mask(torch.ones(600_000), round(0.5 * 65536))
    a, b = m[:-1].float(), m[1:].float()
    corr = float(((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std()))
    assert abs(corr) < 0.01


def test_dropout_gradient_eval_and_seed():
    d = dropout.Dropout(0.3)
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(5)
    y = d(x)
    y.sum().backward()
    assert torch.allclose(x.grad, y.detach() / x.detach())  # the gradient is the mask
    assert x.grad.unique().tolist() == [0.0, pytest.approx(1 / 0.7, rel=1e-4)]  # p to 1/65536
    torch.manual_seed(5)
    assert torch.equal(d(x), y)  # the torch generator decides: resumed runs redraw the same masks
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError):
        dropout.Dropout(1.0)


def test_speed_up_swaps_dropout_and_keeps_weights(tmp_path):
    model = tiny.build("bert", tmp_path / "bert")
    keys = set(model.state_dict())
    n = dropout.speed_up(model)
    assert n > 0 and not any(type(m) is nn.Dropout and m.p > 0 for m in model.modules())
    assert set(model.state_dict()) == keys


def _lora_llama(path: Path):
    model = tiny.build("llama", path)
    names = frozen.base_names(model)
    model = lora.apply(model, lora.LoraConfig(r=4, target_modules=["all-linear"]), tasks.TASKS["causal"])
    return model, names


def test_lowered_frozen_weights_give_autocast_numbers_and_restore_exactly(tmp_path):
    folder = tmp_path / "llama"
    model, names = _lora_llama(folder)
    with torch.no_grad():  # a LoRA that is not the identity yet
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    model.eval()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 250, (2, 11))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits.float()
    lowered = frozen.lower(model, folder, names)
    assert lowered is not None and len(lowered) > 0
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits.float()
    assert torch.equal(before, after)
    lowered.restore()
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, original[n]), n


def test_lower_declines_weights_missing_from_files(tmp_path):
    folder = tmp_path / "llama"
    model, names = _lora_llama(folder)
    assert frozen.lower(model, tmp_path / "elsewhere", names) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_run_leaves_the_base_weights_exact(tmp_path, registry, monkeypatch):
    folder = tmp_path / "llama"
    reference = tiny.build("llama", folder)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i} it is."}) + "\n"
                            for i in range(12)))
    kept = {}
    original = loop.train

    def train(model, *a, **kw):
        kept["dtypes"] = {p.dtype for p in model.parameters() if not p.requires_grad}
        kept["model"] = model
        return original(model, *a, **kw)

    monkeypatch.setattr(loop, "train", train)
    run.tune(TuneConfig(base=str(folder), method="lora", data=str(data), epochs=1, batch_size=4,
                        max_length=64, precision="bf16", forgetting=False, out="bf16-lora"), registry)
    assert torch.bfloat16 in kept["dtypes"]  # the frozen weights were stored in bf16 while training
    trained = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
               for n, p in kept["model"].named_parameters() if not p.requires_grad}
    for n, p in reference.named_parameters():
        assert torch.equal(trained[n], p), n


def test_fp32_attention_matches_sdpa_and_is_restored(tmp_path):
    from oficina.tuning import attention

    model = tiny.build("llama", tmp_path / "llama")
    ids = torch.randint(3, 250, (2, 13))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: the mask must reach the fp32 kernel
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16 = model(input_ids=ids, attention_mask=mask).logits.float()
    previous = attention.use(model)
    assert previous == "sdpa" and model.config._attn_implementation == attention.NAME
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, ref)  # fp32: the same
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model(input_ids=ids, attention_mask=mask).logits.float()
    # bf16 either way; ours keeps attention in fp32, so it is no further from the fp32 result
    assert (ours - ref).abs().mean() <= (ref_bf16 - ref).abs().mean() * 1.1
    attention.restore(model, previous)
    assert model.config._attn_implementation == "sdpa"
    assert attention.use(tiny.build("bert", tmp_path / "bert")) in (None, "sdpa")
