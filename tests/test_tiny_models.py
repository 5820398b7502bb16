"""Tiny random models of each family: saved as HF folders, pulled into the registry, described
with exact shapes, loaded back with identical outputs."""

import pytest
import torch

import oficina
from oficina.models.info import describe
from oficina.registry.sources import pull
from tiny import EXPECTED, FAMILIES, build


def _outputs(model, ids):
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
        out = model(input_ids=ids)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
def test_show_reports_exact_shapes(family, tmp_path, registry):
    model = build(family, tmp_path / family)
    entry = pull(registry, str(tmp_path / family), name=f"tiny-{family}")
    info = describe(registry.snapshot(entry), entry.manifest.format)
    cls, expected = EXPECTED[family]
    assert info.architecture == cls
    assert info.family == model.config.model_type
    for field, value in expected.items():
        assert getattr(info, field) == value, field
    assert info.vocab_size == model.config.vocab_size
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert info.file_type == "F32" and info.bits_per_weight == 32
    # every tensor's shape is reported as stored
    state = model.state_dict()
    for name, shape, dtype in info.tensors:
        assert tuple(state[name].shape) == shape


@pytest.mark.parametrize("family", FAMILIES)
def test_load_back_gives_identical_outputs(family, tmp_path, registry):
    model = build(family, tmp_path / family)
    pull(registry, str(tmp_path / family), name=f"tiny-{family}")
    loaded = oficina.load(f"tiny-{family}", registry=registry)
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    torch.testing.assert_close(_outputs(loaded.torch_model, ids), _outputs(model, ids))


def test_llama_as_gguf_shows_same_shapes_and_logits(tmp_path, registry):
    from oficina.formats.gguf_export import export_gguf

    model = build("llama", tmp_path / "llama")
    gguf = export_gguf(tmp_path / "llama", tmp_path / "tiny-llama.gguf", dtype="f32")
    entry = pull(registry, str(gguf), name="tiny-llama-gguf")
    assert entry.manifest.format == "gguf"
    info = describe(registry.snapshot(entry), "gguf")
    assert info.architecture == "llama" and info.kind == "decoder-only"
    for field, value in EXPECTED["llama"][1].items():
        assert getattr(info, field) == value, field
    assert info.vocab_size == model.config.vocab_size
    assert info.parameters == sum(p.numel() for p in model.parameters())
    loaded = oficina.load("tiny-llama-gguf", registry=registry)
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    torch.testing.assert_close(_outputs(loaded.torch_model, ids), _outputs(model, ids),
                               atol=1e-4, rtol=1e-4)
