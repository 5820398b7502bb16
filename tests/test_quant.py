"""Quantization: the GGML type registry, llama.cpp's file-type mixes, GGUF export of every type
on a tiny model, PyTorch int8/int4/fp16/bf16 through the registry, the CLI, and the report.

Byte-exactness against llama.cpp is in test_kquants_exact.py (per type) and test_llamacpp.py
(whole files); this file needs no llama.cpp."""

from __future__ import annotations

import copy
import json

import gguf
import numpy as np
import pytest
import torch

import gguf_models
from oficina.cli import main
from oficina.formats.ggml.mixes import ALIASES, FILE_TYPES, FileType, get, tensor_type
from oficina.formats.ggml.types import TYPES
from oficina.formats.gguf_export import export_gguf, load_gguf_weights, plan_types
from oficina.models.torch_quant import TARGETS, TorchQuantConfig, quantize
from oficina.quant import QuantLinear

# -- the type registry ------------------------------------------------------------------------------

# worst relative RMS error of quantize -> dequantize on Gaussian rows, per type (about 2^-bits)
RMS_BOUND = {"F32": 0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.06, "Q5_1": 0.06,
             "Q5_K": 0.04, "Q4_0": 0.12, "Q4_1": 0.12, "Q4_K": 0.09, "Q3_K": 0.2, "Q2_K": 0.4}


@pytest.mark.parametrize("name", list(TYPES))
def test_every_type_round_trips(name):
    t = TYPES[name]
    x = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32)
    raw = t.quantize(x)
    assert raw.dtype == np.uint8 and raw.shape == (6, t.row_bytes(512))
    assert raw.shape[1] == gguf.quant_shape_to_byte_shape((512,), t.qtype)[0]
    back = t.dequantize(raw).reshape(x.shape)
    assert np.sqrt(((back - x) ** 2).mean() / (x ** 2).mean()) <= RMS_BOUND[name]
    assert t.bits_per_weight() == 8 * gguf.GGML_QUANT_SIZES[t.qtype][1] / gguf.GGML_QUANT_SIZES[t.qtype][0]
    assert t.fits(512) and (t.block_size == 1 or not t.fits(512 + t.block_size // 2))
    np.testing.assert_array_equal(t.quantize(np.zeros((1, 512), np.float32)).shape, (1, t.row_bytes(512)))


def test_registry_covers_what_the_issue_lists():
    assert set(TYPES) == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
    assert {"Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K", "Q3_K_M", "Q2_K"} <= set(FILE_TYPES)
    assert get("q4_k").name == "Q4_K_M" and get("q4_K_M").name == "Q4_K_M"
    assert all(a in ALIASES for a in ("Q3_K", "Q4_K", "Q5_K"))
    with pytest.raises(KeyError, match="Q4_K_M"):
        get("q4_z")


# -- the mixes, against what llama.cpp chose ---------------------------------------------------------

# llama-quantize (llama-cpp-python 0.3.36) on SmolLM2-135M's F32 export: per tensor kind, the type
# of each of the 30 layers (2=Q2_K .. 6=Q6_K, a=Q4_0, c=Q5_0, d=Q5_1, 8=Q8_0). Hidden size 576 is
# not a multiple of 256, so only ffn_down (rows of 1536) can be a K-quant; the rest show fallbacks.
LLAMA_CPP_SMOLLM2 = {
    "Q2_K": {"attn_v": "a" * 30, "attn_output": "a" * 30, "ffn_down": "3" * 30, "ffn_up": "a" * 30},
    "Q3_K_S": {"attn_v": "a" * 30, "attn_output": "a" * 30, "ffn_down": "3" * 30, "ffn_up": "a" * 30},
    "Q3_K_M": {"attn_v": "dd" + "c" * 28, "attn_output": "c" * 30, "ffn_down": "5" + "4" * 29, "ffn_up": "a" * 30},
    "Q3_K_L": {"attn_v": "d" * 30, "attn_output": "d" * 30, "ffn_down": "5" * 30, "ffn_up": "a" * 30},
    "Q4_K_S": {"attn_v": "dddd" + "c" * 26, "attn_output": "c" * 30, "ffn_down": "555" + "4" * 27, "ffn_up": "c" * 30},
    "Q4_K_M": {"attn_v": "888cc8cc8cc8cc8cc8cc8cc8cc8888", "attn_output": "c" * 30,
               "ffn_down": "666446446446446446446446446666", "ffn_up": "c" * 30},
    "Q5_K_S": {"attn_v": "d" * 30, "attn_output": "d" * 30, "ffn_down": "5" * 30, "ffn_up": "d" * 30},
    "Q5_K_M": {"attn_v": "888dd8dd8dd8dd8dd8dd8dd8dd8888", "attn_output": "d" * 30,
               "ffn_down": "666556556556556556556556556666", "ffn_up": "d" * 30},
    "Q6_K": {"attn_v": "8" * 30, "attn_output": "8" * 30, "ffn_down": "6" * 30, "ffn_up": "8" * 30},
    "Q4_0": {"attn_v": "a" * 30, "attn_output": "a" * 30, "ffn_down": "a" * 30, "ffn_up": "a" * 30},
    "Q8_0": {"attn_v": "8" * 30, "attn_output": "8" * 30, "ffn_down": "8" * 30, "ffn_up": "8" * 30},
}
_LETTER = {"Q2_K": "2", "Q3_K": "3", "Q4_K": "4", "Q5_K": "5", "Q6_K": "6", "Q4_0": "a", "Q4_1": "b",
           "Q5_0": "c", "Q5_1": "d", "Q8_0": "8", "F16": "h", "F32": "f"}


def _smollm2_layout():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    tensors = [("token_embd.weight", (49152, 576)), ("output_norm.weight", (576,))]
    for b in range(30):
        tensors += [(f"blk.{b}.attn_q.weight", (576, 576)), (f"blk.{b}.attn_k.weight", (192, 576)),
                    (f"blk.{b}.attn_v.weight", (192, 576)), (f"blk.{b}.attn_output.weight", (576, 576)),
                    (f"blk.{b}.ffn_gate.weight", (1536, 576)), (f"blk.{b}.ffn_up.weight", (1536, 576)),
                    (f"blk.{b}.ffn_down.weight", (576, 1536)), (f"blk.{b}.attn_norm.weight", (576,))]
    return cfg, tensors


@pytest.mark.parametrize("name", list(LLAMA_CPP_SMOLLM2))
def test_mix_matches_llama_cpp_on_smollm2_layout(name):
    cfg, tensors = _smollm2_layout()
    types = dict(zip([n for n, _ in tensors], plan_types(get(name), cfg, tensors)))
    assert types["token_embd.weight"] == "Q8_0"  # tied output: Q6_K wanted, rows of 576 -> Q8_0
    assert types["blk.0.attn_norm.weight"] == "F32"
    for kind, expected in LLAMA_CPP_SMOLLM2[name].items():
        ours = "".join(_LETTER[types[f"blk.{b}.{kind}.weight"]] for b in range(30))
        assert ours == expected, kind


def test_rules_name_only_known_types_and_categories():
    kinds = {"attn_v", "attn_qkv", "ffn_down", "attn_output"}
    for ft in FILE_TYPES.values():
        assert ft.default in TYPES and all(r.type in TYPES and r.category in kinds for r in ft.rules)
    with pytest.raises(ValueError, match="unknown GGML types"):
        from oficina.formats.ggml.mixes import register
        register(FileType("BAD", FILE_TYPES["Q4_0"].ftype, "Q9_K"))


def test_fallbacks():
    q4km = get("Q4_K_M")
    assert tensor_type(q4km, "blk.0.ffn_up.weight", (512, 256)) == "Q4_K"
    assert tensor_type(q4km, "blk.0.ffn_up.weight", (512, 96)) == "Q5_0"  # not whole 256-blocks
    assert tensor_type(q4km, "blk.0.ffn_up.weight", (512, 48)) == "F16"  # not even 32-blocks
    assert tensor_type(q4km, "output.weight", (512, 256)) == "Q6_K"
    assert tensor_type(get("Q8_0"), "output.weight", (512, 256)) == "Q8_0"
    assert tensor_type(get("F16"), "blk.0.attn_norm.weight", (256,)) == "F32"


# -- GGUF export of every file type, on a tiny model -------------------------------------------------

@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A tiny Llama whose matrices are whole K-quant blocks (except ffn_down: fallbacks)."""
    folder = tmp_path_factory.mktemp("wide")
    model, tok = gguf_models.build("llama", folder, width=256, layers=2)
    return folder, model, tok


def _kl(ref: torch.Tensor, ours: torch.Tensor) -> float:
    p = torch.log_softmax(ref, -1)
    return float((p.exp() * (p - torch.log_softmax(ours, -1))).sum(-1).mean())


# mean KL from the float model on the tiny random model, per file type (generous: random weights
# are harder to quantize than trained ones, whose KLs are in README's table)
KL_BOUND = {"F32": 1e-9, "F16": 1e-5, "BF16": 1e-4, "Q8_0": 1e-4, "Q6_K": 1e-3, "Q5_K_M": 2e-3, "Q5_K_S": 2e-3,
            "Q5_1": 3e-3, "Q5_0": 3e-3, "Q4_K_M": 6e-3, "Q4_K_S": 6e-3, "Q4_1": 0.01, "Q4_0": 0.01,
            "Q3_K_L": 0.03, "Q3_K_M": 0.03, "Q3_K_S": 0.03, "Q2_K": 0.1}


@pytest.mark.parametrize("name", list(FILE_TYPES))
def test_export_round_trips_every_type(wide, tmp_path, name):
    folder, model, tok = wide
    out = export_gguf(folder, tmp_path / f"{name}.gguf", dtype=name)
    reader = gguf.GGUFReader(out)
    assert {k: f.contents() for k, f in reader.fields.items()}["general.file_type"] == FILE_TYPES[name].ftype
    got = {t.name: t.tensor_type.name for t in reader.tensors}
    tensors = [(t.name, tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors]
    assert list(got.values()) == plan_types(FILE_TYPES[name], model.config, tensors)
    ids = tok(gguf_models.SAMPLE)["input_ids"]
    back = load_gguf_weights(out, copy.deepcopy(model))
    assert _kl(gguf_models.logits(model, ids), gguf_models.logits(back, ids)) <= KL_BOUND[name]


def test_load_gguf_weights_equals_transformers_loader(wide, tmp_path):
    """The fast path the report measures with gives the weights oficina.load gives."""
    import oficina

    folder, model, tok = wide
    out = export_gguf(folder, tmp_path / "m.gguf", dtype="Q4_K_M")
    ours = load_gguf_weights(out, copy.deepcopy(model)).state_dict()
    theirs = oficina.load(out).torch_model.state_dict()
    for name, value in ours.items():
        torch.testing.assert_close(theirs[name], value, atol=0, rtol=0, msg=name)


# -- PyTorch quantization through the registry --------------------------------------------------------

@pytest.fixture
def tiny_entry(registry, tmp_path):
    from oficina.registry.sources import import_path

    gguf_models.build("llama", tmp_path / "src", width=128)
    return import_path(registry, tmp_path / "src", "tiny")


@pytest.mark.parametrize("to", TARGETS)
def test_quantize_saves_packed_and_reloads(registry, tiny_entry, to):
    import oficina
    from oficina.quant.convert import quantize_entry

    before = oficina.load("tiny", registry=registry)
    ids = before.encode(gguf_models.SAMPLE)
    ref = gguf_models.logits(before.torch_model, ids)
    entry, result = quantize_entry(registry, "tiny", TorchQuantConfig(to))
    assert entry.name == f"tiny:{to}" and entry.parent == tiny_entry.ref
    assert entry.producer["op"] == "quantize" and entry.producer["to"] == to
    after = oficina.load(f"tiny:{to}", registry=registry)
    lm = after.torch_model
    assert after.info.parameters == before.info.parameters  # packed codes count as the weights they are
    if to in ("int8", "int4"):
        assert after.info.file_type == to.upper()
        assert after.info.bits_per_weight < (0.5 if to == "int8" else 0.4) * before.info.bits_per_weight
    if to in ("int8", "int4"):
        assert {n for n, m in lm.named_modules() if isinstance(m, QuantLinear)} == set(result.modules)
        assert len(result.modules) == 7 * 2  # q k v o gate up down, 2 layers
        assert "lm_head" in result.kept and "model.embed_tokens" in result.kept
        assert entry.manifest.size < 0.7 * tiny_entry.manifest.size
    else:
        assert next(lm.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[to]
    # the reloaded model computes what the quantized one did in memory
    again = copy.deepcopy(before.torch_model)
    quantize(again, TorchQuantConfig(to))
    torch.testing.assert_close(gguf_models.logits(lm, ids), gguf_models.logits(again, ids), atol=1e-5, rtol=0)
    assert _kl(ref, gguf_models.logits(lm, ids)) < (0.02 if to == "int4" else 1e-3)
    assert after.generate("The quick", raw=True, temperature=0, num_predict=3) is not None


@pytest.mark.parametrize("to", TARGETS)
def test_tied_embeddings_survive_packed_save(registry, tmp_path, to):
    """A tied model saved packed keeps one name of the tied pair; loading restores both."""
    import oficina
    from oficina.quant.convert import quantize_entry
    from oficina.registry.sources import import_path

    model, _ = gguf_models.build("llama", tmp_path / "src", width=128, tie_word_embeddings=True)
    import_path(registry, tmp_path / "src", "tied")
    quantize_entry(registry, "tied", TorchQuantConfig(to))
    lm = oficina.load(f"tied:{to}", registry=registry).torch_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    dtype = lm.model.embed_tokens.weight.dtype
    torch.testing.assert_close(lm.model.embed_tokens.weight, model.model.embed_tokens.weight.to(dtype))


def test_int4_group_size_and_per_row_fallback(tmp_path):
    model, _ = gguf_models.build("llama", tmp_path / "m", width=96)  # ffn is 144 wide
    result = quantize(model, TorchQuantConfig("int4", group_size=32))
    assert result.group_size == 32
    assert any(n.endswith("down_proj") for n in result.per_row)  # 144 % 32 != 0: one group per row
    with pytest.raises(Exception, match="group size"):
        TorchQuantConfig("int4", group_size=3)
    with pytest.raises(Exception, match="fp16"):
        TorchQuantConfig("fp16", group_size=32)


# -- the CLI --------------------------------------------------------------------------------------------

def test_cli_quantize_export_and_create(registry, tiny_entry, tmp_path, capsys):
    assert main(["quantize", "tiny", "--to", "int8", "--out", "tiny8"]) == 0
    out = capsys.readouterr().out
    assert "14 linear layers as int8" in out and "kept in float32" in out and "output head" in out

    path = tmp_path / "t.gguf"
    assert main(["export", "tiny", "--format", "gguf", "--type", "q4_k_m", "-o", str(path)]) == 0
    assert {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}["general.file_type"] == 15
    assert main(["export", "tiny8", "--type", "q8_0", "-o", str(tmp_path / "from-int8.gguf")]) == 0  # unpacked first

    mf = tmp_path / "Modelfile"
    mf.write_text("FROM tiny\nPARAMETER temperature 0.3\nSYSTEM be brief\n")
    assert main(["create", "tinyq", "-f", str(mf), "--quantize", "q8_0"]) == 0
    e = registry.get("tinyq")
    assert e.manifest.format == "gguf" and e.manifest.details["quantization"] == "Q8_0"
    assert e.manifest.params == {"temperature": 0.3} and e.manifest.system == "be brief"
    assert e.producer["quantize"] == "q8_0"

    assert main(["export", "tiny", "--type", "q9_x", "-o", str(tmp_path / "x.gguf")]) == 1
    assert "Q4_K_M" in capsys.readouterr().err
    assert main(["quantize", "tiny"]) == 1


# -- the report -----------------------------------------------------------------------------------------

def test_report_rows_and_chart(tmp_path):
    import oficina
    from oficina.quant.report import measure

    gguf_models.build("llama", tmp_path / "src", width=256, layers=2)
    text = tmp_path / "held.txt"
    text.write_text(" ".join(gguf_models.TEXTS))
    report = measure(oficina.load(tmp_path / "src"), ["Q8_0", "Q4_K_M", "Q2_K"], ["int8"], text_path=text,
                     speed=False, workdir=tmp_path / "work")
    rows = {r.type: r for r in report.rows}
    assert list(rows) == ["F32 (reference)", "Q8_0", "Q4_K_M", "Q2_K", "int8"]
    assert rows["F32 (reference)"].kl == 0 and rows["F32 (reference)"].top1 == 1
    assert rows["Q8_0"].kl < rows["Q4_K_M"].kl < rows["Q2_K"].kl
    assert rows["Q8_0"].size > rows["Q4_K_M"].size > rows["Q2_K"].size
    assert 8.4 < rows["Q8_0"].bpw < 8.6 and all(r.tok_s is None for r in report.rows[1:])
    assert abs(rows["Q8_0"].ppl / rows["F32 (reference)"].ppl - 1 - rows["Q8_0"].ppl_change) < 1e-9
    chart = report.chart(tmp_path / "c.png")
    assert chart.stat().st_size > 10_000
    assert report.markdown().count("\n") == len(report.rows) + 1
    assert json.loads(report.save(tmp_path / "r.json").read_text())["rows"][1]["type"] == "Q8_0"
    assert not list((tmp_path / "work").glob("*.gguf"))  # files are measured, then removed


def test_qlora_trains_on_a_packed_model(registry, tiny_entry, tmp_path, monkeypatch):
    """A model `oficina quantize --to int4` registered is a QLoRA base as it is: the packed
    QuantLinear layers are loaded as such and stay frozen, LoRA matrices train on top."""
    from oficina.models import torch_quant
    from oficina.quant.convert import quantize_entry
    from oficina.tuning.config import TuneConfig
    from oficina.tuning.run import tune

    quantize_entry(registry, "tiny", TorchQuantConfig("int4"))
    loaded = []
    real = torch_quant.load_packed
    monkeypatch.setattr(torch_quant, "load_packed", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
    data = tmp_path / "inst.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Where does the {w} sleep?", "output": f"On the sofa {i}."})
                              for i, w in enumerate(["cat", "dog", "fox", "owl"] * 3)) + "\n")
    r = tune(TuneConfig(base="tiny:int4", method="qlora", data=str(data), epochs=1, batch_size=4, max_length=128,
                        out="tiny-qlora", forgetting=False, learning_rate=1e-2), registry)
    assert r.entry.name.startswith("tiny-qlora") and r.trainable > 0
    assert loaded and sum(isinstance(m, QuantLinear) for m in loaded[0].modules()) == 14
