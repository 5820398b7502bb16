"""GGUF files written by oficina, in llama.cpp (llama-cpp-python, the optional ``llamacpp`` extra).

- every file type: oficina's export and llama-quantize's quantization of oficina's F32 export
  are the same file, tensor for tensor (GGML type and bytes): the mixes and the quantizers agree;
- every family: llama.cpp tokenizes like the HF tokenizer and computes the same logits;
- the real SmolLM2 exported as Q4_K_M: llama.cpp's greedy tokens are oficina's.

Skipped, with the reason shown, where llama-cpp-python is not installed.
"""

from __future__ import annotations

import copy

import gguf
import numpy as np
import pytest
import torch

import gguf_models
from oficina.formats.ggml.mixes import FILE_TYPES
from oficina.formats.gguf_export import export_gguf, load_gguf_weights
from oficina.quant import llamacpp

pytestmark = pytest.mark.skipif(llamacpp.missing() is not None, reason=str(llamacpp.missing()))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(folder, F32 export) of tiny models whose matrices are K-quant sized (ffn_down is not)."""
    out = {}
    for family in ("llama", "gemma3_text"):  # GQA 2 and 4: the Q2_K attn_v rule differs
        folder = tmp_path_factory.mktemp(family)
        gguf_models.build(family, folder / "src", width=256, layers=8)
        out[family] = folder / "src", export_gguf(folder / "src", folder / "f32.gguf")
    return out


def _tensors(path):
    return {t.name: (t.tensor_type.name, np.asarray(t.data).view(np.uint8).tobytes()) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("name", [n for n in FILE_TYPES if n not in ("F32", "F16", "BF16")])
def test_same_file_as_llama_quantize(exports, tmp_path, name):
    src, f32 = exports["llama"]
    ours = _tensors(export_gguf(src, tmp_path / "ours.gguf", dtype=name))
    theirs = _tensors(llamacpp.quantize_file(f32, tmp_path / "theirs.gguf", name))
    assert ours.keys() == theirs.keys()
    types = {n: (a[0], b[0]) for n, (a, b) in zip(ours, zip(ours.values(), (theirs[n] for n in ours))) if a[0] != b[0]}
    assert not types, f"types differ: {dict(list(types.items())[:4])}"
    differ = [n for n in ours if ours[n][1] != theirs[n][1]]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.mark.parametrize("name", ["Q2_K", "Q4_K_M"])
def test_same_file_as_llama_quantize_gemma3(exports, tmp_path, name):
    src, f32 = exports["gemma3_text"]
    ours = _tensors(export_gguf(src, tmp_path / "ours.gguf", dtype=name))
    theirs = _tensors(llamacpp.quantize_file(f32, tmp_path / "theirs.gguf", name))
    assert ours == theirs


@pytest.mark.parametrize("family", gguf_models.FAMILIES)
def test_llama_cpp_runs_every_family(family, tmp_path):
    model, tok = gguf_models.build(family, tmp_path / "src")
    out = export_gguf(tmp_path / "src", tmp_path / "m.gguf")
    llm = llamacpp.open_model(out, n_ctx=128)
    try:
        ids = tok(gguf_models.SAMPLE)["input_ids"]
        assert llm.tokenize(gguf_models.SAMPLE.encode(), add_bos=True, special=True) == ids
        llm.reset()
        llm.eval(ids)
        np.testing.assert_allclose(np.array(llm.scores[:len(ids)]), gguf_models.logits(model, ids).numpy(),
                                   atol=2e-3, rtol=0)
    finally:
        llm.close()


@pytest.mark.real
def test_real_smollm2_q4_k_m_greedy_matches(smollm2, tmp_path):
    """SmolLM2-135M exported as Q4_K_M: llama.cpp and oficina's engine on the file's weights
    choose the same tokens.

    llama.cpp multiplies Q4_K/Q5_0 weights by activations rounded to 8 bits (Q8_K/Q8_0 dot
    products), oficina in float32, so their logits differ by up to ~1-2 on this model (on an F16
    file they agree to 0.03): the greedy check is on a short prompt, and the teacher-forced one
    allows a different argmax only where oficina's top two are within 1.0 of each other."""
    from oficina.api import Model
    from oficina.models.loader import Loaded
    from oficina.options import Options

    out = export_gguf(smollm2.loaded.folder, tmp_path / "smollm2-q4_k_m.gguf", dtype="Q4_K_M")
    lm = load_gguf_weights(out, copy.deepcopy(smollm2.torch_model))
    ours = Model(Loaded(lm, smollm2.tokenizer, smollm2.info, smollm2.loaded.folder), None, Options())
    llm = llamacpp.open_model(out, n_ctx=256, threads=2)
    try:
        prompt = "The capital of France is"
        ids = ours.encode(prompt)
        assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids
        ours.generate(prompt, raw=True, temperature=0, num_predict=16)
        mine = ours.last_stats.tokens  # " Paris." and on, up to an end-of-turn token
        assert len(mine) >= 8
        assert llamacpp.greedy(llm, ids, 16, stop=sorted(ours.engine.eos_ids)) == mine

        text = ("Every town has a place where broken things go to be mended, and in ours it was a narrow "
                "workshop at the bottom of the street. The door stuck in wet weather.")
        seq = ours.encode(text)
        llm.reset()
        llm.eval(seq)
        theirs = np.array(llm.scores[:len(seq)])
        with torch.no_grad():
            mine = lm(torch.tensor([seq])).logits[0].float().numpy()
        agree = mine.argmax(-1) == theirs.argmax(-1)
        top2 = np.sort(mine, -1)[:, -2:]
        assert agree.mean() >= 0.9
        assert np.all(agree | (top2[:, 1] - top2[:, 0] < 1.0))
    finally:
        llm.close()
