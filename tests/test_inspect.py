"""Looking inside models: tokens, next-token distributions, attention, embeddings, weights.

Tiny random models of every family (tests/tiny.py) are checked against references computed
here straight from transformers; the real SmolLM2 checks that the answers make sense."""

from __future__ import annotations

import json
import math

import pytest
import torch

import oficina
import tiny
from oficina import inspect
from oficina.cli import main
from oficina.errors import OficinaError
from oficina.generation.sampling import Sampler, distribution

TEXT = "The cat sat on the sofa. O céu é azul."
LONG = "The cat sat on the sofa while the dog slept. " * 30  # > 64 (bert) and > 128 (gpt2) tokens
GENERATIVE = ("llama", "gpt2", "t5")


def png(path) -> tuple[int, int]:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        return im.size


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for fam in tiny.FAMILIES:
        tiny.build(fam, root / fam)
        out[fam] = oficina.load(root / fam)
    return out


# -- tokens ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_tokenize_spans_ids_and_round_trip(models, family):
    m = models[family]
    t = inspect.tokenize(m, TEXT)
    assert t.ids == m.encode(TEXT)
    assert t.round_trip and t.decoded == TEXT
    assert "".join(TEXT[k.start:k.end] for k in t.tokens if not k.special) == TEXT
    assert [k.index for k in t.tokens] == list(range(t.count))
    assert t.context_length == m.info.context_length and t.fits
    d = json.loads(json.dumps(t.to_dict()))
    assert d["count"] == t.count and d["tokens"][1]["text"] == t.tokens[1].text


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_too_long_text_is_one_line_error(models, family):
    m = models[family]
    t = inspect.tokenize(m, LONG)  # tokenize itself only reports
    assert not t.fits and t.count > t.context_length
    for fn in (inspect.attention, inspect.embed) + ((inspect.predict,) if family == "gpt2" else ()):
        with pytest.raises(OficinaError, match=f"at most {t.context_length} .*context length") as e:
            fn(m, LONG)
        assert "\n" not in str(e.value)


# -- next token -----------------------------------------------------------------------------------

def _logits(m, ids):
    tm = m.torch_model
    with torch.no_grad():
        if m.info.kind == "encoder-decoder":
            start = torch.tensor([[tm.config.decoder_start_token_id]])
            return tm(input_ids=torch.tensor([ids]), decoder_input_ids=start).logits[0, -1]
        ref = tm(input_ids=torch.tensor([ids])).logits[0, -1]
    # predict shows what generation samples from: the runner's logits (the fast decoder equals
    # transformers within 1e-4 at float32, tests/test_fast.py), checked here against the module
    got = m.engine.logits(ids)
    assert torch.allclose(got, ref, atol=1e-4)
    return got


@pytest.mark.parametrize("family", GENERATIVE)
@pytest.mark.parametrize("opts", [{}, {"temperature": 0}, {"temperature": 1.5, "top_k": 0, "top_p": 1},
                                  {"top_k": 5, "min_p": 0.2}, {"repeat_penalty": 1.5, "top_p": 0.5}])
def test_predict_probabilities(models, family, opts):
    m = models[family]
    p = inspect.predict(m, "The cat sat on the", top=7, **opts)
    ids = m.encode("The cat sat on the")
    logits = _logits(m, ids)
    assert torch.allclose(p.probs, torch.softmax(logits, 0), atol=1e-6)
    # "after" is the sampler's own distribution, with the prompt as the penalties' history
    assert torch.equal(p.probs_after, distribution(logits, ids, m.options.merged(opts)))
    assert math.isclose(float(p.probs.sum()), 1.0, abs_tol=1e-5)
    assert math.isclose(float(p.probs_after.sum()), 1.0, abs_tol=1e-5)
    assert p.kept == int((p.probs_after > 0).sum()) >= 1
    assert [c.prob_after for c in p.top] == sorted((c.prob_after for c in p.top), reverse=True)
    best = int(torch.argmax(p.probs))
    assert any(c.id == best and c.rank == 1 for c in p.top)
    if opts.get("temperature") == 0:
        assert p.kept == 1 and p.top[0].id == best and p.entropy_after == 0
    if opts.get("top_k"):
        assert p.kept <= opts["top_k"]
    if opts.get("temperature") == 1.5:  # no truncation: a higher temperature only flattens
        assert p.kept == p.vocab_size and p.entropy_after > p.entropy


def test_predict_matches_what_the_sampler_draws(models):
    m = models["llama"]
    opts = {"temperature": 0.7, "top_k": 6, "seed": 7}
    p = inspect.predict(m, "The cat", top=6, **opts)
    ids = m.encode("The cat")
    sampler, logits, n = Sampler(m.options.merged(opts)), _logits(m, ids), 3000
    seen = torch.bincount(torch.tensor([sampler(logits, ids) for _ in range(n)]),
                          minlength=p.vocab_size).double() / n
    assert set(seen.nonzero().flatten().tolist()) <= set((p.probs_after > 0).nonzero().flatten().tolist())
    assert float((seen - p.probs_after.double()).abs().max()) < 0.04


def test_predict_needs_a_language_model_head(models):
    with pytest.raises(OficinaError, match="encoder-only .*try `embed`"):
        inspect.predict(models["bert"], "The cat")
    with pytest.raises(OficinaError, match="no tokens"):
        inspect.predict(models["llama"], "")


# -- attention ------------------------------------------------------------------------------------

def _eager_reference(m, family, ids):
    """Every layer's weights from a fresh copy loaded with eager attention (transformers'
    own ``output_attentions``)."""
    import transformers

    cls = getattr(transformers, tiny.EXPECTED[family][0])
    ref = cls.from_pretrained(str(m.loaded.folder), attn_implementation="eager").eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        if family == "t5":
            return ref.get_encoder()(input_ids=x, output_attentions=True).attentions
        return ref(input_ids=x, output_attentions=True).attentions


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_attention_matches_transformers_eager(models, family):
    m = models[family]
    before = m.torch_model.config._attn_implementation
    ref = _eager_reference(m, family, m.encode(TEXT))
    for layer in range(len(ref)):
        a = inspect.attention(m, TEXT, layer=layer)
        assert a.layers == len(ref) and a.heads == 4 and a.weights.shape[1] == len(a.tokens)
        torch.testing.assert_close(a.weights, ref[layer][0], atol=1e-5, rtol=1e-4)
        assert torch.allclose(a.weights.sum(-1), torch.ones(a.heads, len(a.tokens)), atol=1e-5)
        if a.causal:
            assert float(a.weights.triu(1).abs().max()) == 0.0
    assert a.causal == (m.info.kind == "decoder-only")
    assert m.torch_model.config._attn_implementation == before  # the fast path is back


def test_attention_gpt2_by_hand(models):
    """softmax(QK^T / sqrt(d) + causal mask) from GPT-2's own c_attn projection (layer 0)."""
    m = models["gpt2"]
    tm, ids = m.torch_model, m.encode(TEXT)
    block, seen = tm.transformer.h[0], {}
    hook = block.ln_1.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", out))
    with torch.no_grad():
        tm(input_ids=torch.tensor([ids]))
        hook.remove()
        q, k, _ = block.attn.c_attn(seen["x"])[0].split(tm.config.n_embd, dim=-1)  # [n, d] each
    H, n = tm.config.n_head, len(ids)
    q, k = (t.view(n, H, -1).transpose(0, 1) for t in (q, k))                   # [H, n, hd]
    scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(inspect.attention(m, TEXT, layer=0).weights, scores.softmax(-1),
                               atol=1e-5, rtol=1e-4)


def test_attention_top_tokens_and_ranges(models):
    a = inspect.attention(models["llama"], TEXT, layer=-1)
    assert a.layer == 1
    i = inspect.find_token(a, "sofa")
    assert a.tokens[i].start <= TEXT.index("sofa") + 3 < a.tokens[i].end
    assert inspect.find_token(a, None) == inspect.find_token(a, -1) == len(a.tokens) - 1
    top = a.top(i, k=3)
    assert len(top) == 3 and all(t.index <= i for t, _ in top)  # causal: only the past
    assert [w for _, w in top] == sorted((w for _, w in top), reverse=True)
    assert math.isclose(top[0][1], float(a.map()[i].max()), rel_tol=1e-6)
    for call, match in [(lambda: inspect.attention(models["llama"], TEXT, layer=2), r"layer 2 .*0\.\.1"),
                        (lambda: a.map(4), r"head 4 .*4 heads \(0\.\.3"),
                        (lambda: inspect.find_token(a, 99), r"token 99 .*0\.\.\d+"),
                        (lambda: inspect.find_token(a, "dormindo"), "not in the text")]:
        with pytest.raises(OficinaError, match=match):
            call()


def test_attention_pictures(models, tmp_path):
    m = models["llama"]
    a = inspect.attention(m, TEXT)
    for head in (None, 2, "all"):
        w, h = png(inspect.plots.attention_png(a, tmp_path / f"{head}.png", head=head))
        assert w > 400 and h > 400
    long = inspect.attention(m, "The cat sat on the sofa. " * 14)
    assert len(long.tokens) > inspect.plots.MAX_TOKENS
    png(inspect.plots.attention_png(long, tmp_path / "long.png"))


def test_model_without_attention_weights(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    tok = tiny.tokenizer()
    cfg = MambaConfig(vocab_size=len(tok), hidden_size=16, state_size=4, num_hidden_layers=1)
    MambaForCausalLM(cfg).save_pretrained(tmp_path / "mamba")
    tok.save_pretrained(tmp_path / "mamba")
    with pytest.raises(OficinaError, match="does not expose attention weights"):
        inspect.attention(oficina.load(tmp_path / "mamba"), "The cat")


# -- embeddings -----------------------------------------------------------------------------------

def _hidden(m, ids):
    tm, x = m.torch_model, torch.tensor([ids])
    with torch.no_grad():
        if m.info.kind == "encoder-decoder":
            return tm.encoder(input_ids=x).last_hidden_state[0]
        if m.info.kind == "encoder-only":
            return tm(input_ids=x).last_hidden_state[0]
        return tm.base_model(input_ids=x).last_hidden_state[0]


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_embed_and_similarity(models, family):
    m = models[family]
    e = inspect.embed(m, TEXT)
    ids = m.encode(TEXT)
    assert e.embedding_length == m.info.embedding_length and e.pooling == "mean"
    assert e.token_vectors.shape == (len(ids), e.embedding_length)
    torch.testing.assert_close(e.token_vectors, m.torch_model.get_input_embeddings()(torch.tensor(ids)))
    hidden = _hidden(m, ids)
    torch.testing.assert_close(e.sentence, hidden.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(inspect.embed(m, TEXT, pooling="cls").sentence, hidden[0])
    torch.testing.assert_close(inspect.embed(m, TEXT, pooling="last").sentence, hidden[-1])
    assert math.isclose(inspect.similarity(m, TEXT, TEXT).cosine, 1.0, abs_tol=1e-6)
    s = inspect.similarity(m, "The cat sat", "The dog slept")
    assert -1 <= s.cosine <= 1 and s.embedding_length == e.embedding_length
    assert len(e.to_dict(tokens=True)["tokens"][0]["vector"]) == e.embedding_length


def test_embed_uses_the_sentence_transformers_pooling(tmp_path):
    tiny.build("bert", tmp_path)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    m = oficina.load(tmp_path)
    assert inspect.embed(m, "The cat").pooling == "cls"
    with pytest.raises(OficinaError, match="valid: mean, cls, last, max"):
        inspect.embed(m, "The cat", pooling="median")


# -- weights --------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_weights_tree_totals_and_histogram(models, family, tmp_path):
    m = models[family]
    w = inspect.weights(m)
    unique = {id(p): p.numel() for p in m.torch_model.parameters()}
    assert w.total == w.parameters == sum(unique.values()) == m.info.parameters
    assert sum(w.totals.values()) == w.total and "other" not in w.totals
    assert {"embeddings", "attention", "feed_forward", "norms"} <= set(w.totals)
    assert {p.stored for p in w.params} == {"F32"} and w.layers == 2
    assert sum(r["count"] for r in w.tree()) == w.total
    # one row per kind of tensor (T5's relative position bias lives in block 0 only)
    assert max(r["times"] for r in w.tree() if "*" in r["name"]) == 2
    table = m.torch_model.get_input_embeddings().weight
    assert w.histogram.shape == tuple(table.shape) and sum(w.histogram.counts) == table.numel()
    assert not w.histogram.dequantized
    one = inspect.weights(m, layer=-1, bins=20)
    assert one.layer == 1 and {p.layer for p in one.params} == {1} and one.total < w.total
    assert len(one.histogram.counts) == 20 and len(one.histogram.shape) == 2
    assert json.loads(json.dumps(one.to_dict()))["histogram"]["name"] == one.histogram.name
    for log in (False, True):
        w, h = png(inspect.plots.histogram_png(one.histogram, tmp_path / f"{log}.png", log=log))
        assert w > 500 and h > 300
    with pytest.raises(OficinaError, match=r"layer 2 .*0\.\.1"):
        inspect.weights(m, layer=2)
    with pytest.raises(OficinaError, match="matches .* tensors"):
        inspect.weights(m, layer=0, tensor="weight")
    with pytest.raises(OficinaError, match="no tensor named like"):
        inspect.weights(m, tensor="nonexistent")


# -- command line ---------------------------------------------------------------------------------

def test_cli(models, tmp_path, capsys):
    llama, bert = str(models["llama"].loaded.folder), str(models["bert"].loaded.folder)

    def run(*argv) -> str:
        assert main(list(argv)) == 0
        return capsys.readouterr().out

    assert json.loads(run("tokenize", llama, TEXT, "--json"))["round_trip"] is True
    assert "decodes back to the text exactly" in run("tokenize", llama, TEXT)
    d = json.loads(run("predict", llama, "The cat", "--top", "3", "--temperature", "0", "--json"))
    assert d["options"]["temperature"] == 0 and d["kept"] == 1 and d["top"][0]["prob_after"] == 1
    assert "P AFTER" in run("predict", llama, "--top-k", "3", "The cat")  # TEXT after a flag
    out = run("attention", llama, TEXT, "--layer", "1", "--head", "all", "--token", "sofa",
              "-o", str(tmp_path / "a.png"))
    assert "attends most to" in out and png(tmp_path / "a.png")
    assert len(json.loads(run("attention", bert, TEXT, "--head", "0", "--json"))["weights"]) > 5
    assert json.loads(run("embed", bert, "The cat", "--json"))["embedding_length"] == 32
    assert "input embedding of each token" in run("embed", llama, "The cat", "--tokens")
    assert "cosine similarity 1.0000" in run("similarity", bert, "The cat", "The cat")
    out = run("weights", llama, "--layer", "0", "-o", str(tmp_path / "h.png"))
    assert "self_attn.q_proj.weight" in out and png(tmp_path / "h.png")
    assert main(["attention", llama, TEXT, "--layer", "7"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0..1" in err


# -- the real SmolLM2 -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(smollm2):
    return smollm2


def test_smollm2_predicts_paris(real):
    p = inspect.predict(real, "The capital of France is", top=5)
    assert p.top[0].text == " Paris" and p.top[0].rank == 1
    assert math.isclose(float(p.probs.sum()), 1.0, abs_tol=1e-4)
    assert math.isclose(float(p.probs_after.sum()), 1.0, abs_tol=1e-4)


def test_smollm2_attention_png(real, tmp_path):
    text = "The cat was sleeping on the sofa because it was tired"
    a = inspect.attention(real, text, layer=15)
    assert len(a.tokens) == 12 and a.layers == 30 and a.heads == 9
    assert real.torch_model.config._attn_implementation == "sdpa"
    w, h = png(inspect.plots.attention_png(a, tmp_path / "map.png"))
    assert w > 500 and h > 500


def test_smollm2_tokenize_round_trips(real):
    t = inspect.tokenize(real, "computador")
    assert [k.text for k in t.tokens] == ["comput", "ador"] and t.context_length == 8192
    for text in ("computador", "O céu é azul.\n\tNão? 🙂 x=1;  two  spaces "):
        t = inspect.tokenize(real, text)
        assert t.round_trip and real.tokenizer.decode(t.ids) == text


def test_smollm2_weights_show_stored_quant_types(real):
    w = inspect.weights(real, layer=0)
    stored = {p.name.split(".")[-2]: p.stored for p in w.params}
    assert stored["q_proj"] == "Q4_1" and stored["input_layernorm"] == "F32"
    assert w.histogram.stored == "Q4_1" and w.histogram.dequantized
    assert inspect.weights(real).histogram.stored == "Q8_0"  # token_embd
