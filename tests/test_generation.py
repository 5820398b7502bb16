"""The decode loop on a tiny random Llama: determinism, stop rules, limits, truncation."""

import pytest
import torch

import oficina
from oficina.generation.engine import fit_prompt
from oficina.generation.text import Detokenizer, StopMatcher
from oficina.options import Options
from oficina.registry.sources import pull
from tiny import build, tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from oficina.registry.registry import Registry

    root = tmp_path_factory.mktemp("gen")
    build("llama", root / "llama")
    reg = Registry(root / "home")
    pull(reg, str(root / "llama"), name="tiny")
    return oficina.load("tiny", registry=reg)


def test_same_seed_same_text_different_seed_differs(tiny):
    a = tiny.generate("The cat", seed=7, temperature=1.0, num_predict=20, top_k=0, top_p=1.0)
    b = tiny.generate("The cat", seed=7, temperature=1.0, num_predict=20, top_k=0, top_p=1.0)
    c = tiny.generate("The cat", seed=8, temperature=1.0, num_predict=20, top_k=0, top_p=1.0)
    assert a == b and a != c


def test_greedy_matches_argmax_of_a_full_forward(tiny):
    ids = tiny.encode_chat([{"role": "user", "content": "The cat"}])
    out = tiny.engine.generate(ids, Options(temperature=0, num_predict=8))
    model = tiny.torch_model
    seq = list(ids)
    with torch.no_grad():
        for _ in range(len(out.tokens)):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert out.tokens == seq[len(ids):]


def _without_eos(model, prompt: str, **options):
    """Greedy generation with every end token's logit at -inf (a logits processor on the decode
    loop), so that only ``num_predict`` or a ``stop`` can end it: (text, stats)."""
    eos = sorted(model.engine.eos_ids)

    def no_eos(logits):
        logits = logits.clone()
        logits[..., eos] = float("-inf")
        return logits

    ids = model.encode_chat([{"role": "user", "content": prompt}])
    pieces, stats = [], None
    for item in model.engine.stream(ids, Options(temperature=0, **options), processor=no_eos):
        if isinstance(item, str):
            pieces.append(item)
        else:
            stats = item
    return "".join(pieces), stats


def test_num_predict_and_done_reason(tiny):
    _, s = _without_eos(tiny, "The cat", num_predict=5)
    assert (s.eval_tokens, s.done_reason) == (5, "length")
    s = tiny.generate("The cat", temperature=0, num_predict=5).stats  # the model's own EOS on
    assert s.eval_tokens <= 5 and s.done_reason in ("length", "stop")


def test_stop_text_is_not_returned(tiny):
    full, s = _without_eos(tiny, "The cat", num_predict=30)
    assert s.eval_tokens == 30 and len(full) >= 4
    stop = full[2:4]
    cut, s = _without_eos(tiny, "The cat", num_predict=30, stop=[stop])
    assert cut == full[: full.index(stop)]
    assert s.done_reason == "stop"


def test_long_prompt_is_cut_and_said(tiny, _quiet_reporter):
    prompt = "the cat sat on the sofa " * 40
    s = tiny.generate(prompt, raw=True, temperature=0, num_predict=4, num_ctx=64).stats
    assert s.truncated and "num_ctx" in s.truncated
    assert s.prompt_tokens < 64
    assert any("kept the first" in m for _, m in _quiet_reporter.messages)


def test_fit_prompt_keeps_bos_and_tail():
    ids = list(range(100))
    kept, note = fit_prompt(ids, Options(num_ctx=40, num_predict=10), limit=0, keep=1)
    assert kept[0] == 0 and kept[-1] == 99 and len(kept) == 30 and "dropped 70" in note
    same, none = fit_prompt(ids[:20], Options(num_ctx=40), limit=0)
    assert same == ids[:20] and none is None


def test_stream_pieces_join_to_the_decoded_tokens(tiny):
    story = tiny.stream("Paris is", temperature=0, num_predict=16)
    pieces = list(story)
    tokens = story.stats.tokens
    assert "".join(pieces) == tiny.tokenizer.decode(tokens, skip_special_tokens=True)


def test_detokenizer_never_splits_characters():
    tok = tokenizer()
    text = "O gato dorme no sofá. O céu é azul."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    d = Detokenizer(tok)
    pieces = [d.add(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("stops,chunks,expected", [
    (["END"], ["hello E", "N", "D more"], "hello "),
    (["END"], ["hello E", "NOUGH"], "hello ENOUGH"),
    (["a", "bc"], ["xxb", "c"], "xx"),
    ([], ["plain"], "plain"),
])
def test_stop_matcher(stops, chunks, expected):
    m = StopMatcher(stops)
    out = "".join(m.feed(c)[0] for c in chunks) + ("" if m.hit else m.flush())
    assert out == expected
