"""The server on the real SmolLM2-135M-Instruct: the same greedy text as the Python API, a
schema-constrained answer and a forced tool call that validate, through both official clients."""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

from conftest import real_home
from serve_util import Running

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def srv(real_registry):
    s = Running(real_home(), slots=4, max_queue=8)
    yield s
    s.stop()


def test_greedy_text_matches_the_python_api(srv, smollm2):
    want = smollm2.generate("What is the capital of France?", temperature=0, num_predict=24)
    got = ollama.Client(host=srv.url).generate(model="smollm2", prompt="What is the capital of France?",
                                               options={"temperature": 0, "num_predict": 24})
    assert got.response == want and "Paris" in got.response
    ai = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
    chat = ai.chat.completions.create(model="smollm2", temperature=0, max_tokens=24,
                                      messages=[{"role": "user", "content": "What is the capital of France?"}])
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
