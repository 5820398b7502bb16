"""The response cache's key and store, the price table, and the metrics registry (parsed back with
prometheus-client's own parser)."""

from __future__ import annotations

import copy

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oficina.errors import FormatError, OficinaError
from oficina.options import Options
from oficina.serve import cache, cost
from oficina.serve.cache import Cached, ResponseCache
from oficina.serve.convlog import Entry
from oficina.serve.metrics import Metrics

DIGEST = "sha256:" + "12" * 32
BASE = {
    "model": "smollm2",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "options": {"temperature": 0, "top_k": 40, "num_ctx": 2048, "stop": ["\n\n"]},
    "template": "{{ .Prompt }}",
    "system": "You are terse.",
    "format": {"type": "object", "properties": {"a": {"type": "string"}}},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "raw": False,
    "think": False,
    "images": ["aGVsbG8="],
    "stream": True,
    "keep_alive": "5m",
}


def _variants():
    """One change per field of the request: each must change the key."""
    out = {}
    for name in Options.__dataclass_fields__:
        v = copy.deepcopy(BASE)
        default = getattr(Options(), name)
        if isinstance(default, tuple):  # list parameters: stop, guard, rag
            v["options"][name] = {"stop": ["stop!"], "guard": ["pii"], "rag": ["glass"]}[name]
        else:
            v["options"][name] = default + 1 if not isinstance(default, float) else abs(default - 0.05)
        if name == "temperature":
            v["options"][name] = 0.5
        out[f"option {name}"] = v
    for field, value in [("template", "{{ .System }}{{ .Prompt }}"), ("system", "You are verbose."),
                         ("format", "json"), ("raw", True), ("think", True), ("images", ["d29ybGQ="]),
                         ("model", "smollm2:v2")]:
        v = copy.deepcopy(BASE)
        v[field] = value
        out[field] = v
    v = copy.deepcopy(BASE)
    v["tools"][0]["function"]["name"] = "g"
    out["tool name"] = v
    v = copy.deepcopy(BASE)
    v["tools"][0]["function"]["parameters"] = {"type": "object", "properties": {"x": {"type": "integer"}}}
    out["tool parameters"] = v
    v = copy.deepcopy(BASE)
    v["format"]["properties"]["a"]["type"] = "integer"
    out["format schema"] = v
    for i, change in enumerate([lambda m: m[1].update(content="Hi!"), lambda m: m[0].update(role="user"),
                                lambda m: m.append({"role": "assistant", "content": "Hello"}), lambda m: m.pop(0)]):
        v = copy.deepcopy(BASE)
        change(v["messages"])
        out[f"messages {i}"] = v
    return out


VARIANTS = _variants()


def test_every_option_is_covered_by_a_variant():
    assert {k[7:] for k in VARIANTS if k.startswith("option ")} == set(Options.__dataclass_fields__)


@pytest.mark.parametrize("field", list(VARIANTS))
def test_the_key_changes_with_every_field(field, tmp_path):
    base_key = cache.key(DIGEST, BASE)
    assert cache.key(DIGEST, VARIANTS[field]) != base_key
    store = ResponseCache(tmp_path / "cache.db")
    store.put(base_key, "smollm2", DIGEST, Cached(["Hel", "lo"], {"done_reason": "stop"}))
    assert store.get(cache.key(DIGEST, VARIANTS[field])) is None


def test_the_key_ignores_delivery_and_spelling_but_not_the_model_version():
    k = cache.key(DIGEST, BASE)
    same = copy.deepcopy(BASE)
    same.update(stream=False, keep_alive=0)
    same["options"].update(temperature="0", top_k=40.0, num_ctx="2048")   # as a Modelfile spells them
    same = dict(reversed(list(same.items())))                             # key order
    assert cache.key(DIGEST, same) == k
    assert cache.key("sha256:" + "34" * 32, BASE) != k                     # a new version of the model
    eff = Options.from_mapping({"temperature": 0})
    explicit = Options.from_mapping({"temperature": 0, "top_k": 40})      # a default spelled out
    body = {k: v for k, v in BASE.items() if k != "options"}
    assert cache.key(DIGEST, body, eff) == cache.key(DIGEST, body, explicit)
    with pytest.raises(OficinaError, match="unknown parameter 'temprature'"):
        cache.key(DIGEST, {"options": {"temprature": 0}})


def test_only_repeatable_requests_qualify():
    assert cache.repeatable({"temperature": 0}) and cache.repeatable({"seed": 7})
    assert cache.repeatable(Options(temperature=0.9, seed=0))
    assert not cache.repeatable({}) and not cache.repeatable({"temperature": 0.7, "seed": -1})


def test_the_store_keeps_chunks_counts_hits_and_evicts_least_recently_used(tmp_path):
    store = ResponseCache(tmp_path / "cache.db", max_bytes=2000)
    answer = Cached(["Ol", "á, ", "mundo", " 🌍"], {"done_reason": "stop", "eval_count": 4})
    assert store.put("a", "m", DIGEST, answer)
    got = store.get("a")
    assert got.pieces == answer.pieces and got.final == answer.final and got.text == "Olá, mundo 🌍"
    big = Cached(["x" * 600], {})
    store.put("b", "m", DIGEST, big)
    store.get("a")                      # a is now more recently used than b
    store.put("c", "m", DIGEST, big)
    store.put("d", "m", DIGEST, big)    # over 2000 bytes: b goes first
    assert store.get("b") is None and store.get("a") is not None and store.stats()[1] <= 2000
    assert not store.put("huge", "m", DIGEST, Cached(["y" * 5000]))
    assert cache.parse_size("256MB") == 256_000_000 and cache.parse_size("1GiB") == 2**30
    with pytest.raises(OficinaError, match="cannot read size 'lots'"):
        cache.parse_size("lots")


# -- cost -------------------------------------------------------------------------------------------
PRICES = """\
currency = "EUR"

[models.smollm2]
prompt_per_1k = 0.05
output_per_1k = 0.2   # generated tokens cost more

[models."gpu-llama"]
per_second = 0.5

[models."*"]
output_per_1k = 1
"""


def test_a_price_table_gives_each_response_its_cost(tmp_path):
    p = tmp_path / "prices.toml"
    p.write_text(PRICES)
    t = cost.load(p)
    assert t.currency == "EUR"
    assert t.cost("smollm2:latest", 2000, 500) == pytest.approx(0.1 + 0.1)
    assert t.cost("gpu-llama", 100, 100, busy_seconds=3) == pytest.approx(1.5)
    assert t.cost("anything-else", 0, 1000) == pytest.approx(1.0)
    assert cost.parse('[models.a]\nprompt_per_1k = 1\n').cost("b", 1, 1) is None  # no price, no cost


@pytest.mark.parametrize("change,message", [
    (("output_per_1k = 0.2", "ouptut_per_1k = 0.2"), r"prices\.toml:5: unknown price 'ouptut_per_1k' for model 'smollm2'"),
    (("per_second = 0.5", "per_second = -0.5"), r"prices\.toml:8: per_second for model 'gpu-llama' must be a non-negative"),
    (("per_second = 0.5", 'per_second = "cheap"'), r"prices\.toml:8: per_second .* \(got 'cheap'\)"),
    (('[models."*"]', '[models."*"'), r"prices\.toml:10: not valid TOML"),
    (('currency = "EUR"', 'curency = "EUR"'), r"prices\.toml:1: unknown setting 'curency'"),
])
def test_a_typo_in_the_price_table_names_file_and_line(change, message, tmp_path):
    p = tmp_path / "prices.toml"
    p.write_text(PRICES.replace(*change))
    with pytest.raises(FormatError, match=message):
        cost.load(p)


def test_no_price_table_means_no_cost(home, tmp_path):
    assert cost.load() is None
    with pytest.raises(FormatError, match="no such price table"):
        cost.load(tmp_path / "missing.toml")


# -- metrics ------------------------------------------------------------------------------------------
NAMED = ["oficina:requests", "oficina:time_to_first_token_seconds", "oficina:inter_token_latency_seconds",
         "oficina:e2e_request_latency_seconds", "oficina:request_queue_time_seconds", "oficina:prompt_tokens",
         "oficina:generation_tokens", "oficina:num_requests_running", "oficina:num_requests_waiting",
         "oficina:kv_cache_usage_perc", "oficina:response_cache_hits", "oficina:prefix_cache_hits",
         "oficina:request_errors", "oficina:cost"]


def _scrape(m: Metrics) -> dict[str, dict]:
    text, ctype = m.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out.setdefault(fam.name, {})[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(samples: dict, suffix: str = "") -> float:
    return sum(v for (name, _), v in samples.items() if name.endswith(suffix))


def test_every_named_metric_is_exposed_and_moves():
    m = Metrics()
    state = {"tiny": (0, 0, 0.0)}
    m.watch(lambda: state)
    before = _scrape(m)
    m.observe(Entry("/api/chat", "tiny", [], output="hi", finish="stop", prompt_tokens=12, output_tokens=3,
                    queue_s=0.01, ttft_s=0.05, total_s=0.2, cost=0.25), gaps=[0.05, 0.07], currency="EUR")
    m.observe(Entry("/v1/chat/completions", "tiny", [], finish="error", error="boom", total_s=0.01))
    m.cache_lookup("tiny", hit=True)
    m.prefix("tiny", prompt_tokens=40, reused=32)
    state["tiny"] = (3, 2, 0.75)
    after = _scrape(m)
    for name in NAMED:
        assert name in after, name
        suffix = "_count" if name.endswith("_seconds") else ""
        moved = _total(after[name], suffix) - _total(before.get(name, {}), suffix)
        assert moved > 0, name
    assert after["oficina:cost"][("oficina:cost_total", (("currency", "EUR"), ("model", "tiny")))] == 0.25
    assert after["oficina:prefix_cache_hits"][("oficina:prefix_cache_hits_total", (("model", "tiny"),))] == 32
    assert after["oficina:kv_cache_usage_perc"][("oficina:kv_cache_usage_perc", (("model", "tiny"),))] == 0.75
    assert after["oficina:request_errors"][
        ("oficina:request_errors_total", (("kind", "error"), ("model", "tiny"), ("route", "/v1/chat/completions")))] == 1
    assert _total(after["oficina:inter_token_latency_seconds"], "_count") == 2


# -- prefix reuse in the runner (what the prefix-cache counters count) ------------------------------
def test_a_prompt_that_shares_only_a_prefix_reuses_it_and_gets_the_same_logits(tmp_path):
    import torch

    import tiny
    from oficina.generation.hf_runner import TransformersRunner

    model = tiny.build("llama", tmp_path / "m")
    runner = TransformersRunner(model, [1], 256, max_batch=2)
    first = list(range(5, 25))
    slot, reused = runner.acquire(first)
    runner.prefill(slot, first, reused)
    runner.decode([slot], [7])
    runner.release(slot)
    second = first[:10] + [99, 98]            # diverges after 10 ids: the cache is cut back to them
    slot, reused = runner.acquire(second)
    assert reused == 10
    logits = runner.prefill(slot, second, reused)
    fresh = TransformersRunner(model, [1], 256, max_batch=1)
    s, _ = fresh.acquire(())
    assert torch.allclose(logits, fresh.prefill(s, second, 0), atol=1e-5)
