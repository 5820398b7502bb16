"""HF folder -> GGUF export, checked against transformers' own GGUF loader on a tiny Llama.

The reference is the round trip: a GGUF written here and loaded back with
``from_pretrained(dir, gguf_file=...)`` must give the same config, logits and token ids. The GGUF
sits in a folder of its own, so transformers cannot fall back to the original tokenizer files.
"""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import gguf_models
from oficina.errors import FormatError
from oficina.formats import gguf_export as ge
from oficina.formats.atomic import atomic_write
from oficina.formats.gguf_export import ARCHS, export_gguf

SAMPLE = "The quick brown fox jumps over the lazy dog. Größe 12345, naïve café 🦙 <|end|>"
CHAT = "{% for m in messages %}<|begin|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there!"}]
EXTRA_ROWS = 4  # the embedding has more rows than the tokenizer has tokens, as many real models do


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences, with a BOS-adding template like Llama 3's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello world! How are you today?",
             "GGUF files carry the weights and the tokenizer of a model."] * 4
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|begin|>", "<|end|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", pair="<|begin|> $A $B:1",
        special_tokens=[("<|begin|>", tok.token_to_id("<|begin|>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin|>", eos_token="<|end|>", pad_token="<|pad|>")
    fast.chat_template = CHAT
    return fast


@pytest.fixture(scope="module")
def make_llama(tmp_path_factory, tokenizer):
    """A function (**LlamaConfig overrides) -> (folder, model), built once per distinct override."""
    built: dict[tuple, tuple] = {}

    def make(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in built:
            config = LlamaConfig(
                vocab_size=len(tokenizer) + EXTRA_ROWS, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1, pad_token_id=2, **overrides)
            torch.manual_seed(0)
            model = LlamaForCausalLM(config).eval()
            with torch.no_grad():  # random norms and biases, so a misplaced one shows in the logits
                for name, p in model.named_parameters():
                    if p.ndim == 1:
                        p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.1)
            folder = tmp_path_factory.mktemp("llama")
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            built[key] = folder, model
        return built[key]

    return make


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokenizer(SAMPLE)["input_ids"]])).logits


def _export_and_load(src, tmp_path, dtype="f32", **load_kwargs):
    out = tmp_path / "gguf" / f"model-{dtype}.gguf"
    out.parent.mkdir()
    assert export_gguf(src, out, dtype=dtype) == out
    model = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, **load_kwargs).eval()
    return out, model


@pytest.mark.parametrize("dtype, tied, atol", [
    ("f32", False, 1e-4), ("f32", True, 1e-4),
    ("f16", False, 1e-2), ("f16", True, 1e-2),
    ("bf16", False, 3e-2), ("q8_0", False, 5e-2),
])
def test_round_trip_through_transformers(make_llama, tokenizer, tmp_path, dtype, tied, atol):
    src, ref = make_llama(tie_word_embeddings=tied)
    out, model = _export_and_load(src, tmp_path, dtype)

    for attr in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(model.config, attr) == getattr(ref.config, attr), attr
    assert model.config.rms_norm_eps == pytest.approx(ref.config.rms_norm_eps)
    assert model.config.rope_parameters["rope_theta"] == ref.config.rope_parameters["rope_theta"]
    torch.testing.assert_close(_logits(model, tokenizer), _logits(ref, tokenizer), atol=atol, rtol=0)

    back = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    assert back(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]
    assert back.decode(back(SAMPLE)["input_ids"]) == tokenizer.decode(tokenizer(SAMPLE)["input_ids"])
    assert (back.bos_token, back.eos_token, back.pad_token) == ("<|begin|>", "<|end|>", "<|pad|>")
    assert back.chat_template == CHAT
    assert back.apply_chat_template(MESSAGES, tokenize=False) == tokenizer.apply_chat_template(MESSAGES, tokenize=False)

    reader = gguf.GGUFReader(out)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == ge.file_type(dtype).ftype
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.ggml.tokens"][-1] == f"[PAD{len(tokenizer) + EXTRA_ROWS - 1}]"
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert ("output.weight" in types) is not tied
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.1.ffn_down.weight"].name == ge.file_type(dtype).default


@pytest.mark.parametrize("overrides", [
    {"head_dim": 32},  # head_dim * heads != hidden: written as rope.dimension_count and key_length
    {"attention_bias": True, "mlp_bias": True},  # the Q/K biases are permuted like their weights
])
def test_round_trip_variants(make_llama, tokenizer, tmp_path, overrides):
    src, ref = make_llama(**overrides)
    # the GGUF config mapping has no key for biases; llama.cpp finds them by tensor name
    biases = {k: v for k, v in overrides.items() if k.endswith("_bias")}
    _, model = _export_and_load(src, tmp_path, **biases)
    assert model.config.head_dim == ref.config.head_dim
    torch.testing.assert_close(_logits(model, tokenizer), _logits(ref, tokenizer), atol=1e-4, rtol=0)


def test_llama_cpp_reads_the_file(make_llama, tokenizer, tmp_path):
    """The other reader: llama.cpp (the optional ``llamacpp`` extra) tokenizes and computes alike."""
    llama_cpp = pytest.importorskip("llama_cpp")
    src, ref = make_llama(head_dim=32)
    out = export_gguf(src, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(str(out), logits_all=True, n_ctx=64, verbose=False)
    ids = tokenizer(SAMPLE)["input_ids"]
    assert llm.tokenize(SAMPLE.encode(), add_bos=True, special=True) == ids
    llm.eval(ids)
    np.testing.assert_allclose(np.array(llm.scores[:len(ids)]), _logits(ref, tokenizer)[0].numpy(), atol=1e-3, rtol=0)
    assert llm.metadata["tokenizer.chat_template"] == CHAT


def test_progress_counts_every_tensor(make_llama, tmp_path):
    src, _ = make_llama()
    calls = []
    out = export_gguf(src, tmp_path / "m.gguf", progress=lambda done, total: calls.append((done, total)))
    n = len(gguf.GGUFReader(out).tensors)
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_unsupported_model_type_is_refused(tmp_path):
    src = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(src)
    with pytest.raises(FormatError, match=r"model_type 'bert'.*supported: .*llama") as e:
        export_gguf(src, tmp_path / "bert.gguf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "bert.gguf").exists()


def test_unsupported_tokenizer_is_refused(make_llama, tmp_path):
    src = tmp_path / "spm"
    shutil.copytree(make_llama()[0], src)
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    (src / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(FormatError, match=r"pre-tokenizer Metaspace.*supported: .*gpt-2"):
        export_gguf(src, tmp_path / "out.gguf")
    assert os.listdir(tmp_path) == ["spm"]


def test_tensor_types_follow_llama_cpp():
    from oficina.formats.ggml import mixes

    q8 = mixes.get("q8_0")
    assert mixes.tensor_type(q8, "blk.0.attn_norm.weight", (64,)) == "F32"  # norms, biases
    assert mixes.tensor_type(q8, "blk.0.ffn_up.weight", (64, 96)) == "Q8_0"
    assert mixes.tensor_type(q8, "blk.0.ffn_up.weight", (64, 48)) == "F16"  # rows of 48 are not whole 32-blocks
    assert mixes.tensor_type(mixes.get("bf16"), "blk.0.ffn_up.weight", (64, 48)) == "BF16"


def test_unknown_dtype_is_refused(make_llama, tmp_path):
    with pytest.raises(FormatError, match="q4_z.*Q4_K_M"):
        export_gguf(make_llama()[0], tmp_path / "out.gguf", dtype="q4_z")


def test_failed_export_leaves_no_file(make_llama, tmp_path):
    src, _ = make_llama()

    def fail(done, total):
        if done == 3:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        export_gguf(src, tmp_path / "m.gguf", progress=fail)
    assert os.listdir(tmp_path) == []

    # an older file under that name survives a failed export untouched
    (tmp_path / "m.gguf").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        export_gguf(src, tmp_path / "m.gguf", progress=fail)
    assert os.listdir(tmp_path) == ["m.gguf"] and (tmp_path / "m.gguf").read_bytes() == b"old"


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.txt"
    with atomic_write(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"
    with pytest.raises(KeyError), atomic_write(path) as f:
        f.write(b"half")
        raise KeyError
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["f.txt"]


# -- the tables, against their sources -----------------------------------------------------------

@pytest.mark.parametrize("spec", ARCHS.values(), ids=list(ARCHS))
def test_tensor_table_agrees_with_gguf_py(spec):
    """Every row names the tensor gguf-py's tensor_mapping.py (which transformers inverts) names."""
    name_map = gguf.get_tensor_name_map(spec.arch, 2)
    for module, tensor in spec.tensors.items():
        assert name_map.get_name(module.format(bid=1)) == gguf.TENSOR_NAMES[tensor].format(bid=1), module


@pytest.mark.parametrize("spec", ARCHS.values(), ids=list(ARCHS))
def test_hparam_table_agrees_with_transformers(spec):
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    theirs = GGUF_CONFIG_MAPPING[spec.arch_name]
    prefix = "{arch}."
    ours = {h.key.removeprefix(prefix): h.source for h in spec.hparams if isinstance(h.source, str)}
    assert {k: v for k, v in ours.items() if k in theirs} == {k: theirs[k] for k in ours if k in theirs}
    read = {k for k, v in theirs.items() if v is not None}  # None: a key transformers ignores
    assert read - set(ours) <= {"rope.freq_base"}  # written, from a function of the config


def test_pre_tokenizer_regexes_agree_with_transformers():
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from oficina.formats.gguf_tokenizer import BPE_PRE

    for steps, name in BPE_PRE.items():
        if steps[0].startswith("Split "):
            assert GGUF_PRE_TOKENIZER_SPLITS[name] == steps[0].removeprefix("Split "), name


def test_qk_permutation_is_undone_by_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    undo = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    q, k = np.random.rand(64, 64).astype(np.float32), np.random.rand(32, 64).astype(np.float32)
    gq = ARCHS["llama"].fixes[gguf.MODEL_TENSOR.ATTN_Q](q, config)
    gk = ARCHS["llama"].fixes[gguf.MODEL_TENSOR.ATTN_K](k, config)
    assert not np.array_equal(gq, q)
    np.testing.assert_array_equal(undo.process(gq, "blk.0.attn_q.weight").weights, q)
    np.testing.assert_array_equal(undo.process(gk, "blk.0.attn_k.weight").weights, k)
    # per head, rows (x0..x7, y0..y7) become (x0, y0, x1, y1, ...): GGML rotates adjacent pairs
    rows = ARCHS["llama"].fixes[gguf.MODEL_TENSOR.ATTN_K](np.arange(32.0)[:, None], config)[:16, 0]
    assert rows.tolist() == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]


def test_llama3_rope_factors_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=131072, rope_parameters=rope)
    kv, [(tensor, factors)] = ARCHS["llama"].rope(config)
    assert kv == [] and tensor is gguf.MODEL_TENSOR.ROPE_FREQS
    base = 1.0 / (500000.0 ** (np.arange(0, 64, 2) / 64))
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    # llama.cpp divides each base frequency by its factor (ggml_rope_ext's freq_factors)
    np.testing.assert_allclose(base / factors, inv_freq.numpy(), rtol=1e-5)


# -- every family in the table --------------------------------------------------------------------

@pytest.mark.parametrize("family", gguf_models.FAMILIES)
def test_every_family_round_trips_through_transformers(family, tmp_path):
    """Llama, Mistral (arch llama), Qwen2 (biases, no permutation) and Gemma 3 (1 + w norms,
    SentencePiece vocabulary): same logits and token ids back from transformers' GGUF loader, and
    the same weights back from ``load_gguf_weights``."""
    import copy

    from oficina.formats.gguf_export import load_gguf_weights

    model, tok = gguf_models.build(family, tmp_path / "src")
    out = tmp_path / "gguf" / "m.gguf"
    out.parent.mkdir()
    export_gguf(tmp_path / "src", out)
    ids = tok(gguf_models.SAMPLE)["input_ids"]
    back = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name).eval()
    torch.testing.assert_close(gguf_models.logits(back, ids), gguf_models.logits(model, ids), atol=1e-4, rtol=0)
    assert AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)(gguf_models.SAMPLE)["input_ids"] == ids
    mine = load_gguf_weights(out, copy.deepcopy(model))
    for (name, a), b in zip(model.state_dict().items(), mine.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    fields = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()}
    assert fields["general.architecture"] == ge.ARCHS[family].arch_name
    assert fields["tokenizer.ggml.model"] == ("llama" if family == "gemma3_text" else "gpt2")


def test_gemma_vocabulary_is_sentencepiece(tmp_path):
    """Byte pieces are BYTE tokens, no space prefix (Gemma), and a token's score puts the merges
    in tokenizer.json's order (llama.cpp merges the best-scoring pair first)."""
    _, tok = gguf_models.build("gemma3_text", tmp_path / "src")
    out = export_gguf(tmp_path / "src", tmp_path / "m.gguf")
    fields = {k: f.contents() for k, f in gguf.GGUFReader(out).fields.items()}
    tokens, types, scores = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"], fields["tokenizer.ggml.scores"]
    assert types[tokens.index("<0x41>")] == gguf.TokenType.BYTE
    assert types[tokens.index("<bos>")] == gguf.TokenType.CONTROL
    assert types[tokens.index("<unk>")] == gguf.TokenType.UNKNOWN
    assert fields["tokenizer.ggml.add_space_prefix"] is False
    merges = json.loads((tmp_path / "src" / "tokenizer.json").read_text())["model"]["merges"]
    made = ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges[:20]]
    ranks = [scores[tokens.index(t)] for t in made]
    assert ranks == sorted(ranks, reverse=True)


def test_gemma3_layouts_llama_cpp_cannot_run_are_refused(tmp_path):
    gguf_models.build("gemma3_text", tmp_path / "src", final_logit_softcapping=30.0)
    with pytest.raises(FormatError, match="final_logit_softcapping"):
        export_gguf(tmp_path / "src", tmp_path / "m.gguf")
