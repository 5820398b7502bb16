"""The server, driven over real HTTP by the official ``ollama`` and ``openai`` clients (and raw
httpx where the wire format itself is the point), on tiny random models."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import ollama
import openai
import pytest

from servers import Running, tiny_registry

GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    tiny_registry(home, tmp_path_factory.mktemp("models"))
    s = Running(home, slots=4, max_queue=8)
    yield s
    s.stop()


@pytest.fixture
def oc(srv):
    return ollama.Client(host=srv.url)


@pytest.fixture
def ai(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


# -- Ollama ---------------------------------------------------------------------------------------

def test_ollama_generate_stream_and_final_line(oc, srv):
    whole = oc.generate(model="tiny", prompt="The cat", options=GREEDY)
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 12
    for f in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(whole, f), int)
    assert whole.total_duration >= whole.eval_duration > 1000      # nanoseconds, not seconds
    parts = list(oc.generate(model="tiny", prompt="The cat", options=GREEDY, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == whole.response   # greedy: same text either way
    assert parts[-1].prompt_eval_count == whole.prompt_eval_count
    assert srv.wait_idle() == (0, 0)


def test_ollama_chat_raw_system_and_embed(oc):
    r = oc.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], options=GREEDY)
    assert r.message.role == "assistant" and r.eval_count == 12
    chunks = list(oc.chat(model="tiny", messages=[{"role": "user", "content": "hi"}], options=GREEDY, stream=True))
    assert "".join(c.message.content for c in chunks) == r.message.content
    raw = oc.generate(model="tiny", prompt="The cat", raw=True, options=GREEDY)
    sys = oc.generate(model="tiny", prompt="The cat", system="Be brief.", options=GREEDY)
    assert raw.prompt_eval_count < sys.prompt_eval_count
    e = oc.embed(model="tinybert", input=["a cat", "a dog"])
    assert len(e.embeddings) == 2 and abs(sum(x * x for x in e.embeddings[0]) - 1) < 1e-4
    old = oc.embeddings(model="tinybert", prompt="a cat")
    assert len(old.embedding) == len(e.embeddings[0])


def test_ollama_models_routes(oc, srv):
    names = {m.model for m in oc.list().models}
    assert {"tiny:latest", "tinybert:latest"} <= names
    show = oc.show("tiny")
    assert show.details.family == "llama" and "completion" in show.capabilities
    oc.generate(model="tiny", prompt="x", options={"num_predict": 1}, keep_alive="10m")
    ps = {m.model: m for m in oc.ps().models}
    assert "tiny:latest" in ps and ps["tiny:latest"].size > 0 and ps["tiny:latest"].expires_at is not None
    oc.create(model="tiny-brief", from_="tiny", system="Answer in one word.", parameters={"temperature": 0})
    assert "Answer in one word." in oc.show("tiny-brief").modelfile
    oc.copy("tiny-brief", "tiny-brief2")
    oc.delete("tiny-brief")
    oc.delete("tiny-brief2")
    assert not {"tiny-brief:latest", "tiny-brief2:latest"} & {m.model for m in oc.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        oc.pull("/etc/passwd")
    assert e.value.status_code == 400
    assert httpx.get(srv.url + "/api/version").json()["version"]
    assert httpx.get(srv.url + "/").status_code == 200


def test_keep_alive_zero_unloads(oc, srv):
    oc.generate(model="tiny", prompt="x", options={"num_predict": 1}, keep_alive=0)
    asyncio.run(srv.pool.reap())
    assert "tiny:latest" not in srv.pool.loaded


# -- OpenAI ---------------------------------------------------------------------------------------

MSG = [{"role": "user", "content": "Say something."}]


def test_openai_chat_stream_usage_and_done(ai, srv):
    r = ai.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10
    stream = ai.chat.completions.create(model="tiny", messages=MSG, max_tokens=10, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].choices == []
    assert len({c.id for c in chunks}) == 1 and chunks[0].id != r.id
    body = {"model": "tiny", "messages": MSG, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body) as resp:
        lines = [x for x in resp.iter_lines() if x]
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)


def test_openai_n_seed_stop_and_truncated(ai):
    r = ai.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, n=3, seed=7, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    again = ai.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, n=3, seed=7, temperature=1.0)
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]
    full = ai.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0).choices[0].message.content
    stop = full[3:5]
    cut = ai.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    long = [{"role": "user", "content": "cat " * 200}]
    t = ai.chat.completions.create(model="tiny", messages=long, max_tokens=4, temperature=0, extra_body={"num_ctx": 64})
    assert "dropped" in t.model_extra["truncated"]
    assert t.usage.prompt_tokens < 64


def test_openai_completions_embeddings_models(ai):
    c = ai.completions.create(model="tiny", prompt="The cat", max_tokens=5, temperature=0)
    assert c.object == "text_completion" and c.usage.completion_tokens == 5
    chunks = list(ai.completions.create(model="tiny", prompt="The cat", max_tokens=5, temperature=0, stream=True))
    assert "".join(x.choices[0].text for x in chunks if x.choices) == c.choices[0].text
    e = ai.embeddings.create(model="tinybert", input=["a cat", "a dog"])      # base64 on the wire
    assert len(e.data) == 2 and abs(sum(x * x for x in e.data[1].embedding) - 1) < 1e-4
    f = ai.embeddings.create(model="tinybert", input="a dog", encoding_format="float")
    assert f.data[0].embedding == pytest.approx(e.data[1].embedding, abs=1e-6)
    assert {"tiny", "tinybert"} <= {m.id for m in ai.models.list()}
    assert ai.models.retrieve("tiny").id == "tiny"


def test_openai_tools_forced_call(ai):
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}}]
    r = ai.chat.completions.create(model="tiny", messages=MSG, tools=tools, tool_choice="required",
                                   max_tokens=150, temperature=0)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


# -- structured output ----------------------------------------------------------------------------

SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    {"type": "string", "enum": ["red", "green", "blue"]},
    {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2}},
     "required": ["tags"]},
    {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["age"]},
    {"type": "object", "properties": {"kind": {"const": "cat"}}, "required": ["kind"]},
    {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}}, "required": ["v"]},
    {"type": "object", "properties": {"inner": {"type": "object", "properties": {"z": {"type": "integer"}},
                                                "required": ["z"]}}, "required": ["inner"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, "required": ["code"]},
    {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}, "required": ["d"]},
    {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}, "required": ["n"]},
    {"type": "object", "$defs": {"p": {"type": "object", "properties": {"q": {"type": "integer"}}, "required": ["q"]}},
     "properties": {"p": {"$ref": "#/$defs/p"}}, "required": ["p"]},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string", "maxLength": 4}], "items": False},
    {"type": "object", "properties": {"s": {"type": "string", "minLength": 2, "maxLength": 4}}, "required": ["s"]},
    {"type": "object", "properties": {"e": {"enum": [1, "two", None]}}, "required": ["e"]},
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "maxLength": 3}},
     "required": ["a", "b"], "additionalProperties": False},
    {"type": "integer", "minimum": -5, "maximum": 5},
]


def test_twenty_schemas_always_validate(srv):
    """Random weights, sampled at temperature 1: only the grammar makes these valid."""
    assert len(SCHEMAS) == 20

    gate = asyncio.Semaphore(10)            # within the fixture's 4 slots + 8 queued

    async def one(client, i, schema):
        async with gate:
            r = await client.post(srv.url + "/api/generate", json={
                "model": "tiny", "prompt": "JSON please", "format": schema, "stream": False,
                "options": {"temperature": 1.0, "seed": i, "num_predict": 250}}, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    async def main():
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(one(client, i, s) for i, s in enumerate(SCHEMAS)))

    for schema, out in zip(SCHEMAS, asyncio.run(main())):
        assert out["done_reason"] == "stop", (schema, out["response"])
        jsonschema.validate(json.loads(out["response"]), schema)


@pytest.mark.parametrize("fmt", [
    {"type": "number", "multipleOf": 3},                 # xgrammar would ignore it: refused
    {"type": "string", "format": "credit-card"},
    {"type": "banana"},
    "yaml",
])
def test_unenforceable_format_is_400(srv, fmt):
    r = httpx.post(srv.url + "/api/generate", json={"model": "tiny", "prompt": "x", "format": fmt, "stream": False})
    assert r.status_code == 400 and "format" in r.json()["error"]


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,body,status", [
    ("/api/generate", b"{not json", 400),
    ("/api/generate", b'{"model": "tiny", "prompt": 5}', 400),
    ("/api/generate", b'{"model": "nope", "prompt": "x"}', 404),
    ("/api/chat", b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "options": {"top_p": 7}}', 400),
    ("/api/generate", b'{"model": "tiny", "prompt": "\xff\xfe"}', 400),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "images": ["aGk="]}', 400),
    ("/api/generate", b'{"model": "tinybert", "prompt": "x"}', 400),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": "hi"}', 400),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": true}', 400),
    ("/v1/chat/completions", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404),
])
def test_bad_requests_get_one_clear_error(srv, path, body, status):
    r = httpx.post(srv.url + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    message = err if path.startswith("/api") else err["message"]
    assert message and "\n" not in message and "Traceback" not in message


def test_ten_megabyte_prompt_is_refused(srv):
    r = httpx.post(srv.url + "/api/generate", json={"model": "tiny", "prompt": "a" * (10 * 1024 * 1024)})
    assert r.status_code == 400 and "larger than" in r.json()["error"]


# -- guards (oficina/safety) on a request --------------------------------------------------------

def test_guards_in_a_request_check_the_prompt_and_the_stream(oc, srv, tmp_path):
    words, letters = tmp_path / "words.rules", tmp_path / "letters.rules"
    words.write_text("block:secret forbidden\n")
    letters.write_text("block:letters /[A-Za-z]/\n")
    r = oc.generate(model="tiny", prompt="the forbidden thing", raw=True,
                    options={**GREEDY, "guard": [f"rules={words}"]})
    assert r.done_reason == f"guard:rules={words}:secret" and r.response == "" and r.eval_count == 0
    # a digits-only prompt passes; the random model's first letter ends the stream, unseen
    guard = {**GREEDY, "num_predict": 20, "guard": [f"rules={letters}"]}
    free = oc.generate(model="tiny", prompt="123 456", raw=True, options={**GREEDY, "num_predict": 20})
    assert any(c.isalpha() for c in free.response), free.response   # what the guard must stop
    parts = list(oc.generate(model="tiny", prompt="123 456", raw=True, options=guard, stream=True))
    text = "".join(p.response for p in parts)
    assert parts[-1].done_reason == f"guard:rules={letters}:letters", parts[-1]
    assert not any(c.isalpha() for c in text) and free.response.startswith(text)
    bad = httpx.post(srv.url + "/api/generate", json={"model": "tiny", "prompt": "x", "options": {"guard": ["nope"]}})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    assert srv.wait_idle() == (0, 0)


# -- many clients ---------------------------------------------------------------------------------

class SlowRunner:
    """The real runner, with 20 ms added to every decode step so that a 250-token answer
    outlasts the client (the tiny model alone finishes it in a blink)."""

    def __init__(self, runner):
        self._r = runner

    def decode(self, slots, tokens):
        import time

        time.sleep(0.02)
        return self._r.decode(slots, tokens)

    def __getattr__(self, name):
        return getattr(self._r, name)


def test_disconnect_frees_the_slot(tmp_path_factory):
    """A client that goes away (streamed or not) frees its slot: the generation is cut, never
    finished (observers, which see every finished request, see none of these)."""
    from oficina.serve.pool import open_runner

    home = tmp_path_factory.mktemp("slow")
    tiny_registry(home, tmp_path_factory.mktemp("slowmodels"))
    srv = Running(home, slots=2, runner_factory=lambda m, n: SlowRunner(open_runner(m, n)))
    finished = []
    srv.server.observers.append(finished.append)
    body = {"model": "tiny", "prompt": "The dog", "options": {"num_predict": 100000, "num_ctx": 256}}
    with httpx.stream("POST", srv.url + "/api/generate", json=body, timeout=60) as r:
        first = next(r.iter_lines())
        assert json.loads(first)["done"] is False
        assert srv.counts()[0] == 1
    assert srv.wait_idle(10) == (0, 0)
    # not streamed: the client gives up waiting for the whole answer and closes the connection
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/api/generate", json={**body, "stream": False}, timeout=0.3)
    assert srv.wait_idle(10) == (0, 0)
    srv.stop()
    assert finished == []


def test_queue_bound_503_and_nothing_leaks(srv):
    """slots 4 + queue 8: of 112 simultaneous requests at least 100 are refused at once with
    Retry-After; every accepted one completes; afterwards nothing is running or waiting."""
    async def one(client):
        return await client.post(srv.url + "/api/generate", timeout=120, json={
            "model": "tiny", "prompt": "The cat", "stream": False, "options": {"num_predict": 100}})

    async def main():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as client:
            await one(client)                      # loaded before the burst
            return await asyncio.gather(*(one(client) for _ in range(112)))

    results = asyncio.run(main())
    busy = [r for r in results if r.status_code == 503]
    ok = [r for r in results if r.status_code == 200]
    assert len(busy) + len(ok) == 112 and len(busy) >= 100 - 12
    assert all(int(r.headers["retry-after"]) >= 1 for r in busy)
    assert all(r.json()["done"] and r.json()["done_reason"] in ("stop", "length") for r in ok)   # none lost
    assert srv.wait_idle() == (0, 0)


def test_eight_streams_batch_together(srv):
    """8 concurrent greedy streams finish clearly sooner than the same 8 one after another, with
    the same text (at least 6 of 8 identical, allowing batched kernels to round differently)."""
    import time

    prompts = [f"{w} sat on the" for w in ("The cat", "A dog", "Paris", "Lisbon", "The sky", "O gato", "Models", "Tokens")]
    body = lambda p: {"model": "tiny", "prompt": p, "stream": False, "options": {"temperature": 0, "num_predict": 48}}
    httpx.post(srv.url + "/api/generate", json=body("warm up"), timeout=120)
    runner = srv.pool.loaded["tiny:latest"].scheduler.runner
    if runner.capabilities.name == "transformers":
        pytest.skip("the transformers runner steps its slots one after another; batching needs the fast runner")
    t0 = time.perf_counter()
    one_by_one = [httpx.post(srv.url + "/api/generate", json=body(p), timeout=120).json()["response"] for p in prompts]
    sequential = time.perf_counter() - t0

    async def main():
        async with httpx.AsyncClient() as client:
            rs = await asyncio.gather(*(client.post(srv.url + "/api/generate", json=body(p), timeout=120) for p in prompts))
            return [r.json()["response"] for r in rs]

    t0 = time.perf_counter()
    together = asyncio.run(main())
    concurrent = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(one_by_one, together))
    assert same >= 6, list(zip(one_by_one, together))
    assert concurrent < 0.6 * sequential, (concurrent, sequential)


def test_memory_budget_unloads_least_recently_used(srv):
    """Past the budget, loading a model unloads the idle model used longest ago."""
    from oficina.serve.pool import Pool

    async def main():
        pool = Pool(srv.pool.home, memory_budget=1)             # nothing fits beside anything
        a = await pool.get("tiny")
        pool.release(a)
        b = await pool.get("tinybert")
        assert list(pool.loaded) == ["tinybert:latest"]
        c = await pool.get("tiny")                              # tinybert is busy: kept, over budget
        assert set(pool.loaded) == {"tiny:latest", "tinybert:latest"}
        pool.release(b)
        pool.release(c)
        await pool.close()

    asyncio.run(main())
