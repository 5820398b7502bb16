"""Operations on the real server (uvicorn on a free loopback port, a tiny model, the official
`ollama` and `openai` clients): a cache hit streamed like the original, /metrics parsed with
prometheus-client's parser and moving, cost headers, one log entry per request."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tiny
from oficina.registry.registry import Registry
from oficina.registry.sources import import_path
from oficina.serve import cost
from oficina.serve.app import create_app
from oficina.serve.native import Server
from oficina.serve.operate import Operations
from oficina.serve.pool import Pool
from servers import serving

pytestmark = pytest.mark.slow  # real server processes, tens of seconds on a shared CPU

PRICES = '[models.tiny]\nprompt_per_1k = 1.0\noutput_per_1k = 2.0\n'


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("home")
    folder = tmp_path_factory.mktemp("models") / "llama"
    tiny.build("llama", folder)
    import_path(Registry(home), folder, "tiny")
    return home


@pytest.fixture(scope="module")
def served(tiny_home):
    prices = tiny_home / "prices.toml"
    prices.write_text(PRICES)
    ops = Operations(tiny_home, prices=cost.load(prices))
    server = Server(Pool(tiny_home, slots=4))
    with serving(create_app(server, operations=ops)) as url:
        yield url, ops


def _scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + json.dumps(dict(sorted(s.labels.items())))
            out[key] = s.value
    return out


def _sum(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == name)


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "The cat sat on"}],
        "options": {"temperature": 0, "num_predict": 12}}


def _ndjson(url: str, body: dict) -> tuple[httpx.Headers, list[dict]]:
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        return r.headers, [json.loads(line) for line in r.iter_lines() if line.strip()]


def test_a_cache_hit_streams_like_the_original(served):
    url, _ = served
    body = {**CHAT, "messages": [{"role": "user", "content": "The dog slept on"}]}
    h1, first = _ndjson(url, body)
    h2, again = _ndjson(url, body)
    assert h1["x-oficina-cache"] == "miss" and h2["x-oficina-cache"] == "hit"
    pieces = [x["message"]["content"] for x in first[:-1]]
    assert len(pieces) > 1 and [x["message"]["content"] for x in again[:-1]] == pieces  # same chunks
    assert all(not x["done"] for x in again[:-1]) and again[-1]["done"]
    for k in ("done_reason", "eval_count", "prompt_eval_count"):
        assert again[-1][k] == first[-1][k]
    assert again[-1]["cost"] == 0 and first[-1]["cost"] > 0   # a hit computes nothing
    # any other option, or sampling without a seed, is not served from the cache
    h3, _ = _ndjson(url, {**body, "options": {"temperature": 0, "num_predict": 11}})
    h4, _ = _ndjson(url, {**body, "options": {"temperature": 0.7, "num_predict": 4}})
    assert h3["x-oficina-cache"] == "miss" and h4["x-oficina-cache"] == "skip"
    # non-streamed, through the OpenAI route: same text, the header says so, cost in a header
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="x")
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=body["messages"],
                                                           temperature=0, max_tokens=12)
    assert raw.headers["x-oficina-cache"] == "hit"
    assert raw.parse().choices[0].message.content == "".join(pieces)
    assert raw.headers["x-oficina-cost"] == f"{0:.8f} USD"


def test_metrics_move_and_each_request_is_logged_with_its_cost(served):
    url, ops = served
    import ollama

    before = _scrape(url)
    n_before = ops.log.count()
    client = ollama.Client(host=url)
    r = client.chat(model="tiny", messages=[{"role": "user", "content": "Paris is"}],
                    options={"temperature": 0, "num_predict": 8})
    client.generate(model="tiny", prompt="Lisbon is", options={"seed": 3, "num_predict": 6})
    client.generate(model="tiny", prompt="Lisbon is", options={"seed": 3, "num_predict": 6})  # a hit
    with pytest.raises(ollama.ResponseError):
        client.chat(model="tiny", messages=[{"role": "user", "content": "x"}], options={"temperature": -1})
    after = _scrape(url)
    moved = {name: _sum(after, name) - _sum(before, name) for name in (
        "oficina:requests_total", "oficina:time_to_first_token_seconds_count",
        "oficina:inter_token_latency_seconds_count", "oficina:e2e_request_latency_seconds_count",
        "oficina:request_queue_time_seconds_count", "oficina:prompt_tokens_total",
        "oficina:generation_tokens_total", "oficina:response_cache_hits_total",
        "oficina:response_cache_queries_total", "oficina:prefix_cache_queries_total",
        "oficina:request_errors_total", "oficina:cost_total")}
    assert moved["oficina:requests_total"] == 3 and moved["oficina:response_cache_hits_total"] == 1
    assert moved["oficina:request_errors_total"] == 1
    assert all(v > 0 for v in moved.values()), moved
    for gauge in ("oficina:num_requests_running", "oficina:num_requests_waiting", "oficina:kv_cache_usage_perc"):
        assert after[gauge + '{"model": "tiny:latest"}'] == 0   # back to idle
    entries = ops.log.find(limit=4)
    assert ops.log.count() == n_before + 4
    failed, hit, miss, chat = entries
    assert failed.failed and "temperature" in failed.error and failed.model == "tiny:latest"
    assert hit.cached and hit.output == miss.output and hit.cost == 0.0
    assert chat.output == r.message.content and chat.route == "/api/chat"
    assert chat.cost == pytest.approx((chat.prompt_tokens * 1.0 + chat.output_tokens * 2.0) / 1000)
    assert chat.digest.startswith("sha256:") and chat.ttft_s > 0 and chat.total_s >= chat.ttft_s
    assert miss.messages == [{"role": "user", "content": "Lisbon is"}] and miss.options["seed"] == 3


def test_no_cache_and_no_log(tiny_home):
    ops = Operations(tiny_home / "other", cache=False, log=False)
    server = Server(Pool(tiny_home, slots=2))
    with serving(create_app(server, operations=ops)) as url:
        h, _ = _ndjson(url, CHAT)
        h2, _ = _ndjson(url, CHAT)
        assert h["x-oficina-cache"] == h2["x-oficina-cache"] == "skip"
        assert "oficina:requests_total" in httpx.get(url + "/metrics").text
    assert not (tiny_home / "other" / "logs.db").exists() and not (tiny_home / "other" / "cache.db").exists()


def test_a_growing_chat_reuses_its_prefix_and_the_counters_say_so(served):
    url, _ = served
    before = _scrape(url)
    turns = [{"role": "user", "content": "Tell me about the sky"}]
    for word in ("sun", "river", "stone"):
        _, lines = _ndjson(url, {"model": "tiny", "messages": turns, "options": {"temperature": 0.5, "num_predict": 4}})
        turns = [*turns, {"role": "assistant", "content": "".join(x["message"]["content"] for x in lines)},
                 {"role": "user", "content": f"And the {word}?"}]
    after = _scrape(url)
    queried = _sum(after, "oficina:prefix_cache_queries_total") - _sum(before, "oficina:prefix_cache_queries_total")
    reused = _sum(after, "oficina:prefix_cache_hits_total") - _sum(before, "oficina:prefix_cache_hits_total")
    assert 0 < reused < queried      # later turns reuse the earlier turns' KV, never the whole prompt


def test_a_locked_log_never_fails_a_request(served, monkeypatch):
    import sqlite3
    import time

    from oficina.serve import convlog

    url, ops = served
    monkeypatch.setattr(convlog, "RETRY_SECONDS", 0.05)
    n = ops.log.count()
    blocker = sqlite3.connect(ops.log.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")                  # a reviewer's long transaction, say
    try:
        _, lines = _ndjson(url, {**CHAT, "options": {"temperature": 0.9, "num_predict": 3}})
        assert lines[-1]["done"] and ops.log.pending == 1
    finally:
        blocker.execute("ROLLBACK")
    for _ in range(100):
        if ops.log.pending == 0:
            break
        time.sleep(0.05)
    assert ops.log.pending == 0 and ops.log.count() == n + 1 and ops.log.dropped == 0


def test_a_request_can_name_a_library_prompt_and_the_log_records_its_version(served, tiny_home):
    from pathlib import Path

    from oficina.prompts import PromptStore
    from oficina.prompts.spec import parse

    url, ops = served
    store = PromptStore(tiny_home)
    text = (Path(__file__).parents[1] / "examples" / "translate.prompt.yaml").read_text()
    stored, _ = store.add("translate", parse(text))
    store.label("translate", "production", stored.version)
    body = {"model": "tiny", "prompt_name": "translate:production", "variables": {"text": "Good night"},
            "stream": False, "options": {"num_predict": 4}}
    r = httpx.post(url + "/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    e = ops.log.find(limit=1)[0]
    assert e.extra.get("prompt") == stored.ref
    assert e.prompt_text().strip() == "Translate into French. Answer with the translation only.\n\nGood night"
    assert e.options.get("num_predict") == 4 and e.options.get("temperature") == 0   # request over prompt
    chat = httpx.post(url + "/v1/chat/completions", json={
        "model": "tiny", "max_tokens": 4, "messages": [], "prompt_name": "translate",
        "variables": {"text": "Hi", "language": "German"}}, timeout=60)
    assert chat.status_code == 200, chat.text
    assert ops.log.find(limit=1)[0].prompt_text().startswith("Translate into German.")
    bad = httpx.post(url + "/api/generate", json={**body, "variables": {}}, timeout=60)
    assert bad.status_code == 400 and "text" in bad.json()["error"]
    missing = httpx.post(url + "/api/generate", json={**body, "prompt_name": "nope"}, timeout=60)
    assert missing.status_code == 400 and "nope" in missing.json()["error"]
