"""Sampling: each parameter by hand on tiny logits, then the chain against a plain-Python
reference of llama.cpp's candidate-array samplers (src/llama-sampling.cpp), then the sampler."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from oficina.generation import sampling as S
from oficina.options import Options

INF = float("-inf")
L = torch.tensor([2.0, 1.0, 0.0, -1.0])
# softmax(L) = [0.6439, 0.2369, 0.0871, 0.0321]


def kept(x: torch.Tensor) -> list[int]:
    return torch.isfinite(x).nonzero().flatten().tolist()


def opts(**kw) -> Options:
    """Every step off unless asked for, so one test looks at one parameter."""
    base = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, seed=0)
    return Options(**{**base, **kw})


# -- penalties -----------------------------------------------------------------------------------

HIST = [0, 1, 1, 3, 3, 3]
P = torch.tensor([2.0, -1.0, 0.5, 3.0])


def test_repeat_penalty_divides_positive_and_multiplies_negative():
    out = S.apply_penalties(P, HIST, opts(repeat_penalty=2.0))
    assert out.tolist() == [1.0, -2.0, 0.5, 1.5]           # id 2 never seen: untouched


def test_repeat_penalty_below_one_boosts():
    out = S.apply_penalties(P, [0, 1], opts(repeat_penalty=0.5))
    assert out.tolist() == [4.0, -0.5, 0.5, 3.0]


def test_zero_logit_stays_zero_under_repeat_penalty():
    out = S.apply_penalties(torch.tensor([0.0, 1.0]), [0], opts(repeat_penalty=1.3))
    assert out.tolist() == [0.0, 1.0]


def test_frequency_counts_and_presence_once():
    out = S.apply_penalties(P, HIST, opts(frequency_penalty=0.5, presence_penalty=1.0))
    # id 0 x1: 2-0.5-1; id 1 x2: -1-1-1; id 3 x3: 3-1.5-1
    assert out.tolist() == [0.5, -3.0, 0.5, 0.5]


def test_penalties_combine_repeat_first():
    out = S.apply_penalties(P, HIST, opts(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=1.0))
    assert out.tolist() == [1.0 - 1.5, -2.0 - 2.0, 0.5, 1.5 - 2.5]


def test_negative_presence_penalty_encourages():
    out = S.apply_penalties(P, [2], opts(presence_penalty=-1.5))
    assert out.tolist() == [2.0, -1.0, 2.0, 3.0]


@pytest.mark.parametrize("last_n, num_ctx, expected", [
    (2, 4096, [2.0, -1.0, 0.5, 1.5]),     # window [3, 3]
    (3, 4096, [2.0, -1.0, 0.5, 1.5]),     # [3, 3, 3]
    (4, 4096, [2.0, -2.0, 0.5, 1.5]),     # [1, 3, 3, 3]
    (0, 4096, [2.0, -1.0, 0.5, 3.0]),     # off
    (-1, 4096, [1.0, -2.0, 0.5, 1.5]),    # whole context
    (-1, 2, [2.0, -1.0, 0.5, 1.5]),       # -1 means num_ctx = 2
    (100, 4096, [1.0, -2.0, 0.5, 1.5]),   # longer than the history
])
def test_repeat_last_n_window(last_n, num_ctx, expected):
    o = opts(repeat_penalty=2.0, repeat_last_n=last_n, num_ctx=num_ctx)
    assert S.apply_penalties(P, HIST, o).tolist() == expected
    assert S.apply_penalties(P, torch.tensor(HIST), o).tolist() == expected


def test_penalties_return_new_float32_tensor_and_leave_input():
    x = P.clone().double()
    for o in (opts(), opts(repeat_penalty=2.0)):
        out = S.apply_penalties(x, HIST, o)
        assert out.dtype == torch.float32 and out.data_ptr() != x.data_ptr()
    x32 = P.clone()
    assert S.apply_penalties(x32, HIST, opts()).data_ptr() != x32.data_ptr()
    assert x.tolist() == P.tolist()


def test_penalties_ignore_empty_history_and_out_of_range_ids():
    o = opts(repeat_penalty=2.0)
    assert S.apply_penalties(P, [], o).tolist() == P.tolist()
    assert S.apply_penalties(P, [-1, 4, 99], o).tolist() == P.tolist()


# -- truncation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k, ids", [(2, [0, 1]), (1, [0]), (0, [0, 1, 2, 3]), (-3, [0, 1, 2, 3]),
                                    (4, [0, 1, 2, 3]), (9, [0, 1, 2, 3])])
def test_top_k(k, ids):
    out = S.top_k(L, k)
    assert kept(out) == ids
    assert out[ids].tolist() == L[ids].tolist()


def test_top_k_ties_keep_exactly_k():
    assert len(kept(S.top_k(torch.tensor([1.0, 1.0, 1.0, 0.0]), 2))) == 2


@pytest.mark.parametrize("p, ids", [(0.5, [0]), (0.6439, [0]), (0.7, [0, 1]), (0.88, [0, 1]),
                                    (0.9, [0, 1, 2]), (0.99, [0, 1, 2, 3]), (0.0, [0]),
                                    (1.0, [0, 1, 2, 3])])
def test_top_p(p, ids):
    assert kept(S.top_p(L, p)) == ids


def test_top_p_reaching_p_exactly_stops_there():
    # four equal tokens: 0.25 + 0.25 == 0.5 >= 0.5, so two are kept (ties in index order)
    assert kept(S.top_p(torch.zeros(4), 0.5)) == [0, 1]


@pytest.mark.parametrize("p, ids", [(0.3, [0, 1]), (0.1, [0, 1, 2]), (0.5, [0]), (1.0, [0]),
                                    (0.0, [0, 1, 2, 3]), (0.05, [0, 1, 2]), (0.04, [0, 1, 2, 3])])
def test_min_p(p, ids):
    # keep p_i >= min_p * p_max, i.e. logit >= 2 + ln(min_p):
    # ln 0.3 = -1.20, ln 0.1 = -2.30, ln 0.05 = -3.00 (id 3 needs -3), ln 0.04 = -3.22
    assert kept(S.min_p(L, p)) == ids


def test_typical_p_can_drop_the_most_likely_token():
    # -log p = [0.440, 1.440, 2.440, 3.440], entropy H = 0.948,
    # |-log p - H| = [0.507, 0.493, 1.493, 2.493]: id 1 is the most typical, then 0, 2, 3.
    assert kept(S.typical_p(L, 0.2)) == [1]                  # 0.237 > 0.2
    assert kept(S.typical_p(L, 0.5)) == [0, 1]               # 0.881
    assert kept(S.typical_p(L, 0.9)) == [0, 1, 2]            # 0.968
    assert kept(S.typical_p(L, 0.97)) == [0, 1, 2, 3]
    assert kept(S.typical_p(L, 0.0)) == [1]
    assert kept(S.typical_p(L, 1.0)) == [0, 1, 2, 3]


def test_typical_p_needs_strictly_more_than_p():
    # llama.cpp typical: cum_sum > p (top_p: >=). Four equal tokens, p = 0.5: three are kept.
    assert len(kept(S.typical_p(torch.zeros(4), 0.5))) == 3


def test_temperature_divides_and_zero_is_argmax_lowest_id():
    assert S.temperature(L, 2.0).tolist() == [1.0, 0.5, 0.0, -0.5]
    assert S.temperature(L, 1.0).tolist() == L.tolist()
    assert S.temperature(L, 0.0).tolist() == [2.0, INF, INF, INF]
    assert kept(S.temperature(torch.tensor([1.0, 3.0, 3.0, 0.0]), 0.0)) == [1]


def test_filters_keep_removed_tokens_removed():
    x = torch.tensor([INF, 2.0, INF, 1.0, 0.0])
    for f, p in ((S.top_p, 0.99), (S.typical_p, 0.99), (S.min_p, 0.01), (S.top_k, 4)):
        assert set(kept(f(x, p))) <= {1, 3, 4}


@pytest.mark.parametrize("f, p", [(S.top_p, 0.9), (S.typical_p, 0.9), (S.min_p, 0.05), (S.top_k, 3)])
def test_filters_take_any_float_dtype_and_return_float32(f, p):
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        out = f(L.to(dtype), p)
        assert out.dtype == torch.float32 and kept(out) == kept(f(L, p))


# -- the chain -----------------------------------------------------------------------------------

def test_penalties_come_before_top_k():
    x = torch.tensor([3.0, 2.0, 1.0])
    assert kept(S.process(x, [0], opts(repeat_penalty=10.0, top_k=1))) == [1]


def test_temperature_comes_after_truncation():
    # with T = 10 first, softmax would be nearly flat and top_p 0.7 would keep 3 tokens
    out = S.process(L, [], opts(top_p=0.7, temperature=10.0))
    assert kept(out) == [0, 1]
    assert torch.allclose(out[:2], torch.tensor([0.2, 0.1]))


def test_chain_order_top_k_typical_top_p_min_p():
    # each case gives a different answer if its two steps are swapped
    assert kept(S.process(L, [], opts(top_k=1, typical_p=0.2))) == [0]      # typical first: [1]
    # typical 0.5 leaves {0, 1}; then top_p 0.9 of (0.731, 0.269) keeps both.
    # top_p first leaves {0, 1, 2}, where typical 0.5 keeps only id 0.
    assert kept(S.process(L, [], opts(typical_p=0.5, top_p=0.9))) == [0, 1]
    # top_p 0.7 on all four keeps {0, 1}; min_p 0.3 keeps {0, 1}.
    # min_p first renormalises {0, 1} to (0.731, 0.269) and top_p 0.7 then keeps only id 0.
    assert kept(S.process(L, [], opts(top_p=0.7, min_p=0.3))) == [0, 1]


def test_top_p_sees_what_top_k_left():
    # after top_k 2, p = [0.731, 0.269]: top_p 0.72 keeps only id 0; on all 4 (0.644) it needs id 1
    assert kept(S.process(L, [], opts(top_k=2, top_p=0.75))) == [0, 1]
    assert kept(S.process(L, [], opts(top_k=2, top_p=0.72))) == [0]
    assert kept(S.process(L, [], opts(top_p=0.72))) == [0, 1]


@pytest.mark.parametrize("o", [Options(seed=0), opts(), opts(top_k=3, min_p=0.1, temperature=0.3),
                               opts(typical_p=0.5, temperature=2.0), opts(temperature=0.0),
                               opts(top_p=0.0, repeat_penalty=1.5)])
def test_distribution_sums_to_one(o):
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        d = S.distribution(torch.randn(1000, generator=torch.Generator().manual_seed(1)).to(dtype), [5, 6, 5], o)
        assert d.dtype == torch.float32 and d.shape == (1000,)
        assert abs(float(d.sum()) - 1.0) < 1e-5 and bool((d >= 0).all())


def test_temperature_zero_is_one_hot_on_penalised_argmax():
    x = torch.tensor([1.0, 3.0, 3.0, 2.5])
    assert S.distribution(x, [], opts(temperature=0.0)).tolist() == [0.0, 1.0, 0.0, 0.0]
    # penalised: id 1 -> 1.5, id 2 -> 1.5, so id 3 wins
    assert S.distribution(x, [1, 2], opts(temperature=0.0, repeat_penalty=2.0)).tolist() == [0, 0, 0, 1]
    # greedy ignores truncation, as Ollama does: typical_p 0.2 alone would drop id 0 of L
    assert S.distribution(L, [], opts(temperature=0.0, typical_p=0.2)).tolist() == [1, 0, 0, 0]


def test_defaults_keep_everything_sane():
    o = Options()
    x = torch.randn(5000, generator=torch.Generator().manual_seed(3)) * 4
    d = S.distribution(x, list(range(100)), o)
    support = kept(torch.log(d))
    assert 1 <= len(support) <= o.top_k
    assert int(torch.argmax(x)) in support
    assert abs(float(d.sum()) - 1.0) < 1e-5
    token = S.Sampler(o)(x, list(range(100)))
    assert token in support


# -- against a reference -------------------------------------------------------------------------

def reference(logits: list[float], history: list[int], o: Options) -> tuple[dict[int, float], bool]:
    """llama.cpp's chain written out over a candidate list, in float64, one sampler after the
    other as in src/llama-sampling.cpp (min_keep 1); greedy as Ollama. Returns the surviving
    {id: final logit} and whether any decision was too close to call in float32."""
    close = False
    cand = [[i, float(v)] for i, v in enumerate(logits)]
    n = o.num_ctx if o.repeat_last_n == -1 else o.repeat_last_n
    counts = Counter(history[-n:]) if n > 0 else Counter()
    for c in cand:
        k = counts.get(c[0], 0)
        if k:
            c[1] = c[1] * o.repeat_penalty if c[1] <= 0 else c[1] / o.repeat_penalty
            c[1] -= k * o.frequency_penalty + o.presence_penalty
    values = sorted(c[1] for c in cand)
    close |= any(b - a < 1e-4 for a, b in zip(values, values[1:]))
    if o.temperature == 0:
        best = max(cand, key=lambda c: (c[1], -c[0]))
        return {best[0]: best[1]}, close

    def probs(cs):
        m = max(c[1] for c in cs)
        e = [math.exp(c[1] - m) for c in cs]
        return [v / sum(e) for v in e]

    cand.sort(key=lambda c: -c[1])
    if 0 < o.top_k < len(cand):
        cand = cand[: o.top_k]
    if o.typical_p < 1:
        ps = probs(cand)
        h = -sum(p * math.log(p) for p in ps)
        score = [abs(-math.log(p) - h) for p in ps]
        order = sorted(range(len(cand)), key=lambda i: score[i])
        ordered = sorted(score)
        close |= any(b - a < 1e-4 for a, b in zip(ordered, ordered[1:]))
        cum, last = 0.0, len(order)
        for j, i in enumerate(order):
            cum += ps[i]
            close |= abs(cum - o.typical_p) < 1e-4
            if cum > o.typical_p:
                last = j + 1
                break
        cand = sorted((cand[i] for i in order[:last]), key=lambda c: -c[1])
    if o.top_p < 1:
        cum, last = 0.0, len(cand)
        for j, p in enumerate(probs(cand)):
            cum += p
            close |= abs(cum - o.top_p) < 1e-4
            if cum >= o.top_p:
                last = j + 1
                break
        cand = cand[:last]
    if o.min_p > 0:
        floor = cand[0][1] + math.log(o.min_p)
        close |= any(abs(c[1] - floor) < 1e-4 for c in cand)
        cand = [c for c in cand if c[1] >= floor]
    return {c[0]: c[1] / o.temperature for c in cand}, close


options = st.builds(
    Options,
    temperature=st.sampled_from([0.0, 0.5, 0.8, 1.0, 1.7]),
    top_k=st.integers(0, 12),
    top_p=st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
    min_p=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    typical_p=st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
    repeat_penalty=st.sampled_from([1.0, 0.7, 1.1, 2.0]),
    repeat_last_n=st.sampled_from([-1, 0, 1, 3, 64]),
    presence_penalty=st.sampled_from([0.0, -1.0, 0.5]),
    frequency_penalty=st.sampled_from([0.0, -0.5, 1.0]),
    num_ctx=st.sampled_from([2, 4096]),
)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), o=options)
def test_chain_matches_llama_cpp_reference(data, o):
    v = data.draw(st.integers(1, 10))
    logits = data.draw(st.lists(st.floats(-8, 8, width=32), min_size=v, max_size=v, unique=True))
    history = data.draw(st.lists(st.integers(0, v - 1), max_size=8))
    want, close = reference(logits, history, o)
    assume(not close)
    got = S.process(torch.tensor(logits), history, o)
    assert kept(got) == sorted(want)
    assert got[sorted(want)].tolist() == pytest.approx([want[i] for i in sorted(want)], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("scale, bump", [(1.0, 0.0), (3.0, 0.0), (1.5, 12.0), (0.01, 0.0)])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.9, 0.999])
def test_bucketed_prefix_equals_full_sort(monkeypatch, scale, bump, p):
    # large vocabularies take the bucketed path; it must cut exactly where a full sort cuts
    x = torch.randn(20000, generator=torch.Generator().manual_seed(7)) * scale
    x[:30] += bump
    x[100:120] = INF
    fast = [kept(f(x, p)) for f in (S.top_p, S.typical_p)]
    monkeypatch.setattr(S, "_SORT_ALL_BELOW", 10**9)
    slow = [kept(f(x, p)) for f in (S.top_p, S.typical_p)]
    assert fast == slow


# -- the sampler ---------------------------------------------------------------------------------

FLAT = torch.tensor([0.5, 0.2, 0.0, -0.1, 0.3, 0.1, -0.4, 0.25])


def draw(sampler: S.Sampler, n: int, logits=FLAT, history=()) -> list[int]:
    return [sampler(logits, list(history)) for _ in range(n)]


def test_same_seed_same_sequence_and_different_seeds_differ():
    a = draw(S.Sampler(opts(seed=42)), 60)
    assert a == draw(S.Sampler(opts(seed=42)), 60)
    assert a != draw(S.Sampler(opts(seed=43)), 60)


def test_seed_minus_one_draws_a_fresh_seed():
    a, b = S.Sampler(opts(seed=-1)), S.Sampler(opts(seed=-1))
    assert a.seed >= 0 and b.seed >= 0 and a.seed != b.seed
    assert draw(a, 40) == draw(S.Sampler(opts(seed=a.seed)), 40)


def test_greedy_returns_argmax_without_touching_the_rng():
    s = S.Sampler(opts(temperature=0.0, seed=5))
    state = s.generator.get_state()
    assert draw(s, 5) == [0] * 5
    assert s(FLAT, [0]) == 0
    assert s(FLAT, [0, 0]) == 0
    assert S.Sampler(opts(temperature=0.0, repeat_penalty=3.0))(FLAT, [0]) == 4
    assert torch.equal(s.generator.get_state(), state)


@pytest.mark.parametrize("o, history", [
    (opts(seed=11), []),
    (opts(seed=12, top_k=5, temperature=0.7), []),
    (opts(seed=13, top_p=0.6, min_p=0.5, temperature=1.5), []),
    (opts(seed=14, typical_p=0.7, repeat_penalty=1.5, presence_penalty=0.3), [0, 4, 4]),
    (Options(seed=15), [1, 2]),
])
def test_sampling_frequencies_match_distribution(o, history):
    n = 20000
    probs = S.distribution(FLAT, history, o).double()
    seen = torch.bincount(torch.tensor(draw(S.Sampler(o), n, history=history)), minlength=len(FLAT)).double()
    assert bool((seen[probs == 0] == 0).all())              # removed tokens are never drawn
    live = probs > 0
    expected = probs[live] * n
    chi2 = float(((seen[live] - expected) ** 2 / expected).sum())
    # df <= 7: P(chi2 > 30) < 1e-4; fixed seeds make it deterministic anyway
    assert chi2 < 30, (chi2, seen.tolist(), expected.tolist())


def test_sampler_takes_tensor_history_and_low_precision_logits():
    o = opts(seed=3, repeat_penalty=1.3, top_k=4)
    a = draw(S.Sampler(o), 20, FLAT.bfloat16(), history=torch.tensor([0, 4]))
    b = draw(S.Sampler(o), 20, FLAT.bfloat16(), history=[0, 4])
    assert a == b and set(a) <= set(kept(S.process(FLAT.bfloat16(), [0, 4], o)))


def test_large_vocabulary_sample_is_in_support():
    x = torch.randn(262144, generator=torch.Generator().manual_seed(0)) * 3
    for o in (Options(seed=1), opts(seed=1, top_k=0, top_p=0.9), opts(seed=1, typical_p=0.9)):
        support = set(kept(S.process(x, [1, 2, 3], o)))
        assert S.Sampler(o)(x, [1, 2, 3]) in support


def test_rejects_batched_logits():
    with pytest.raises(ValueError):
        S.process(torch.zeros(2, 4), [], Options())
