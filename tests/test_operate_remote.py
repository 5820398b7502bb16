"""A remote model (``FROM openai://host:port/model``) served through a second local server
process as its upstream: the same routes, the front server's own cache, metrics, cost and log,
a 502 with one line when the upstream is down, and a breaker that fails fast until it is back."""

from __future__ import annotations

import time

import httpx
import ollama
import openai
import pytest

import tiny
from oficina.create import create
from oficina.errors import OficinaError
from oficina.registry.registry import Registry
from oficina.registry.sources import import_path
from oficina.serve import cost, remote
from oficina.serve.app import create_app
from oficina.serve.convlog import ConvLog
from oficina.serve.native import Server
from oficina.serve.operate import Operations
from oficina.serve.pool import Pool
from servers import free_port, serving, start_upstream, stop

pytestmark = pytest.mark.slow  # real server processes, tens of seconds on a shared CPU

MESSAGES = [{"role": "user", "content": "The cat sat on"}]
OPTS = {"temperature": 0, "num_predict": 10}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    home = tmp_path_factory.mktemp("upstream")
    folder = tmp_path_factory.mktemp("models") / "llama"
    tiny.build("llama", folder)
    import_path(Registry(home), folder, "tiny")
    port = free_port()
    up = {"home": home, "port": port, "url": f"http://127.0.0.1:{port}", "proc": start_upstream(home, port)}
    yield up
    stop(up["proc"])  # the breaker test starts a new one on the same port: stop that one


@pytest.fixture(scope="module")
def front(upstream, tmp_path_factory):
    home = tmp_path_factory.mktemp("front")
    reg = Registry(home)
    mf = home / "Modelfile"
    mf.write_text(f"FROM openai://127.0.0.1:{upstream['port']}/tiny\nPARAMETER num_predict 10\n")
    entry = create(reg, "far", mf)
    assert entry.manifest.format == "remote" and entry.manifest.files == []
    (home / "prices.toml").write_text('[models.far]\nper_second = 2.0\n')
    ops = Operations(home, prices=cost.load(home / "prices.toml"))
    with serving(create_app(Server(Pool(home)), operations=ops)) as url:
        yield url, ops


def test_a_remote_model_answers_through_every_generation_route(front, upstream):
    url, _ = front
    direct = ollama.Client(host=upstream["url"]).chat(model="tiny", messages=MESSAGES, options=OPTS)
    client = ollama.Client(host=url)
    r = client.chat(model="far", messages=MESSAGES, options={"temperature": 0})
    assert r.message.content == direct.message.content and r.done_reason == direct.done_reason
    assert r.eval_count == direct.eval_count and r.prompt_eval_count == direct.prompt_eval_count
    streamed = "".join(c.message.content for c in client.chat(model="far", messages=MESSAGES,
                                                              options={"temperature": 0, "seed": 1}, stream=True))
    assert streamed == direct.message.content
    g = client.generate(model="far", prompt="The cat sat on", options={"temperature": 0})
    assert g.response == direct.message.content          # a prompt goes up as one user turn
    oa = openai.OpenAI(base_url=url + "/v1", api_key="x")
    c = oa.chat.completions.create(model="far", messages=MESSAGES, temperature=0, max_tokens=10)
    assert c.choices[0].message.content == direct.message.content and c.usage.completion_tokens == direct.eval_count
    parts = [ch.choices[0].delta.content or "" for ch in oa.chat.completions.create(
        model="far", messages=MESSAGES, temperature=0, max_tokens=10, stream=True) if ch.choices]
    assert "".join(parts) == direct.message.content
    done = oa.completions.create(model="far", prompt="The cat", temperature=0, max_tokens=5)
    assert done.choices[0].text and done.usage.completion_tokens <= 5
    assert "far" in [m.id.removesuffix(":latest") for m in oa.models.list().data]


def test_the_front_keeps_its_own_cache_metrics_cost_and_log(front, upstream):
    url, ops = front
    up_log = ConvLog(upstream["home"] / "logs.db")
    n_up = up_log.count()
    body = {"model": "far", "messages": [{"role": "user", "content": "Lisbon is"}], "stream": False,
            "options": {"temperature": 0, "num_predict": 6}}
    first = httpx.post(url + "/api/chat", json=body, timeout=60)
    again = httpx.post(url + "/api/chat", json=body, timeout=60)
    assert first.headers["x-oficina-cache"] == "miss" and again.headers["x-oficina-cache"] == "hit"
    assert again.json()["message"] == first.json()["message"]
    assert up_log.count() == n_up + 1                      # the hit never reached the upstream
    assert float(first.headers["x-oficina-cost"].split()[0]) > 0   # per busy second
    hit, miss = ops.log.find(model="far", limit=2)
    assert (hit.cached, miss.cached) == (True, False) and miss.model == "far:latest"
    assert miss.digest.startswith("sha256:") and miss.output == first.json()["message"]["content"]
    assert miss.cost == pytest.approx(2.0 * (miss.total_s - miss.queue_s), rel=0.05)
    text = httpx.get(url + "/metrics").text
    assert 'oficina:requests_total{finish_reason="length",model="far:latest",route="/api/chat"}' in text
    hits = [line for line in text.splitlines() if line.startswith('oficina:response_cache_hits_total{model="far:latest"}')]
    assert hits and float(hits[0].split()[-1]) >= 1


def test_an_unreachable_upstream_is_a_502_and_the_breaker_fails_fast(front, upstream, monkeypatch):
    url, ops = front
    monkeypatch.setattr(remote, "COOLDOWN", 1.0)
    remote._breakers.clear()
    stop(upstream["proc"])
    body = {"model": "far", "messages": [{"role": "user", "content": "anyone?"}], "stream": False}
    for _ in range(remote.FAILURES):
        r = httpx.post(url + "/api/chat", json=body, timeout=30)
        assert r.status_code == 502
        assert r.json() == {"error": f"upstream http://127.0.0.1:{upstream['port']}/v1 is unreachable (ConnectError)"}
    t0 = time.monotonic()
    r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    assert r.status_code == 502 and "circuit open" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 0.5                     # no connect attempt while open
    assert ops.log.find(failed=True, limit=1)[0].error.startswith("502: upstream")
    upstream["proc"] = start_upstream(upstream["home"], upstream["port"])   # back on the same port
    time.sleep(1.1)                                         # past the cooldown: one trial goes through
    r = httpx.post(url + "/api/chat", json=body, timeout=60)
    assert r.status_code == 200 and remote.breaker(f"http://127.0.0.1:{upstream['port']}/v1").state == "closed"


def test_remote_sources_are_checked():
    assert remote.parse_source("openai://gpu-box:8000/meta-llama/Llama-3.1-8B-Instruct") == (
        "http://gpu-box:8000/v1", "meta-llama/Llama-3.1-8B-Instruct")
    assert remote.parse_source("openais://api.example.com/m")[0] == "https://api.example.com/v1"
    with pytest.raises(OficinaError, match="a remote model is openai://HOST:PORT/MODEL"):
        remote.parse_source("openai://no-model-here")


def test_a_killed_server_loses_no_answered_request(upstream):
    """The entry is committed before the last line goes out, so SIGKILL right after the answer
    loses nothing."""
    port = free_port()
    p = start_upstream(upstream["home"], port)
    try:
        log = ConvLog(upstream["home"] / "logs.db")
        before = log.count()
        answers = [httpx.post(f"http://127.0.0.1:{port}/api/generate", timeout=60, json={
            "model": "tiny", "prompt": f"The {w} is", "stream": False, "options": {"num_predict": 4}}).json()["response"]
            for w in ("cat", "dog", "sun")]
    finally:
        p.kill()
        p.wait()
    got = log.find(limit=3)[::-1]
    assert log.count() == before + 3 and [e.output for e in got] == answers
