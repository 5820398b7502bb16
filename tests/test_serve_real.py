"""The server on the real SmolLM2-135M-Instruct: the same greedy text as the Python API, a
schema-constrained answer and a forced tool call that validate, through both official clients."""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

from conftest import real_home
from servers import Running

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def srv(real_registry):
    s = Running(real_home(), slots=4, max_queue=8)
    yield s
    s.stop()


def test_greedy_text_matches_the_python_api(srv, smollm2):
    want = smollm2.generate("What is the capital of France? Answer in one word.", temperature=0, num_predict=24)
    got = ollama.Client(host=srv.url).generate(model="smollm2", prompt="What is the capital of France? Answer in one word.",
                                               options={"temperature": 0, "num_predict": 24})
    assert got.response == want and "Paris" in got.response
    again = ollama.Client(host=srv.url).generate(model="smollm2", prompt="What is the capital of France? Answer in one word.",
                                                 options={"temperature": 0, "num_predict": 24})
    assert again.response == want          # the second time the slot's cache holds this prompt
    ai = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
    chat = ai.chat.completions.create(model="smollm2", temperature=0, max_tokens=24,
                                      messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}])
    assert chat.choices[0].message.content == want


def test_schema_and_tool_call_on_smollm2(srv):
    ai = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "population_millions": {"type": "integer", "minimum": 0, "maximum": 100}},
              "required": ["city", "population_millions"], "additionalProperties": False}
    r = ai.chat.completions.create(model="smollm2", temperature=0, max_tokens=80,
                                   messages=[{"role": "user", "content": "Give the largest city of France as JSON."}],
                                   response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    value = json.loads(r.choices[0].message.content)
    jsonschema.validate(value, schema)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string", "maxLength": 30}}, "required": ["city"]}}}]
    t = ai.chat.completions.create(model="smollm2", temperature=0, max_tokens=60, tools=tools,
                                   tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                   messages=[{"role": "user", "content": "What is the weather in Lisbon?"}])
    call = t.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)


def test_ollama_chat_with_tools_on_smollm2(srv):
    """Ollama's /api/chat with ``tools``: the official client gets ``message.tool_calls`` back,
    streamed and not. Ollama's API has no ``tool_choice``; its ``format`` (a JSON schema) holding
    one call of the tool is how an Ollama client makes a 135M model write the call."""
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": params}}]
    call_schema = {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": params},
                   "required": ["name", "arguments"]}
    client = ollama.Client(host=srv.url)
    ask = dict(model="smollm2", messages=[{"role": "user", "content": "What is the weather in Lisbon?"}],
               tools=tools, format=call_schema, options={"temperature": 0, "num_predict": 60})
    r = client.chat(**ask)
    assert r.done and r.message.tool_calls, r.message
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(dict(call.function.arguments), params)
    parts = list(client.chat(**ask, stream=True))
    assert parts[-1].done and all(not p.done for p in parts[:-1])
    streamed = parts[-1].message.tool_calls
    assert streamed and streamed[0].function.name == "get_weather"
    assert dict(streamed[0].function.arguments) == dict(call.function.arguments)   # greedy: the same call
    # a request whose answer is not a call of an offered tool gets none
    plain = client.chat(model="smollm2", messages=[{"role": "user", "content": "Say hi."}], tools=tools,
                        options={"temperature": 0, "num_predict": 8})
    assert not plain.message.tool_calls and plain.message.content


@pytest.mark.slow
def test_eight_streams_on_smollm2(srv):
    """8 concurrent greedy answers equal the 8 one-at-a-time answers (at least 6 of 8: batched
    int4 kernels may round differently) and arrive sooner."""
    import asyncio
    import time

    import httpx

    prompts = ["Tell me about the ocean.", "Why is the sky blue?", "Write a short poem about bread.",
               "Explain what a CPU does.", "Give three tips for learning a language.", "What is a prime number?",
               "Describe a cat.", "How do plants grow?"]
    body = lambda p: {"model": "smollm2", "prompt": p, "stream": False, "options": {"temperature": 0, "num_predict": 32}}
    t0 = time.perf_counter()
    alone = [httpx.post(srv.url + "/api/generate", json=body(p), timeout=600).json()["response"] for p in prompts]
    sequential = time.perf_counter() - t0

    async def main():
        async with httpx.AsyncClient() as client:
            rs = await asyncio.gather(*(client.post(srv.url + "/api/generate", json=body(p), timeout=600) for p in prompts))
            return [r.json()["response"] for r in rs]

    t0 = time.perf_counter()
    together = asyncio.run(main())
    concurrent = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(alone, together))
    print(f"smollm2: {same}/8 identical; 8 sequential {sequential:.1f} s, 8 concurrent {concurrent:.1f} s")
    assert same >= 6, [(a, b) for a, b in zip(alone, together) if a != b]
    assert concurrent < 0.6 * sequential
