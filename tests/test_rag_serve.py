"""RAG on the server and in Modelfiles: ``POST /api/rag/ask`` (streamed NDJSON and one object),
the embedding routes computing the RAG encoder's vectors (official ``ollama`` and ``openai``
clients), a model bound to a collection by ``PARAMETER rag`` (create, ``show --modelfile``,
the Python API and the server). Tiny random models where the words do not matter; the real
MiniLM + smollm2 on the shipped set where they do."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest

import oficina
from oficina.create import create, to_modelfile
from oficina.errors import ModelfileError
from oficina.modelfile import parse
from oficina.rag import collection as C
from oficina.rag import evaluate as E
from oficina.rag.answer import IDK
from oficina.rag.embed import load_encoder
from oficina.registry.registry import Registry
from servers import Running, tiny_registry

DATA = Path(__file__).parent.parent / "oficina" / "data" / "rag"


@pytest.fixture(scope="module")
def tiny_srv(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    reg = tiny_registry(home, tmp_path_factory.mktemp("models"))
    docs = tmp_path_factory.mktemp("docs")
    for i in range(3):
        (docs / f"d{i}.md").write_text(f"# Doc {i}\n\nThe cat number {i} sat on the sofa.\n")
    C.create("notes", C.CollectionConfig("tinybert", 24, 4), reg)
    C.ingest("notes", [docs], registry=reg)
    s = Running(home, slots=2, max_queue=8)
    yield s, reg
    s.stop()


def test_embedding_routes_give_the_rag_encoders_vectors(tiny_srv):
    s, reg = tiny_srv
    texts = ["a cat", "the cat number 2 sat on the sofa"]
    want = load_encoder("tinybert", reg).encode(texts)
    got = ollama.Client(host=s.url).embed(model="tinybert", input=texts)
    np.testing.assert_allclose(np.array(got.embeddings), want, atol=1e-5)
    ai = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    v = ai.embeddings.create(model="tinybert", input=texts, encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in v.data]), want, atol=1e-5)
    one = ollama.Client(host=s.url).embeddings(model="tinybert", prompt=texts[0])
    assert len(one.embedding) == want.shape[1]


def test_rag_ask_route_streams_then_gives_sources(tiny_srv):
    s, _ = tiny_srv
    body = {"question": "Where did the cat sit?", "collection": "notes", "model": "tiny", "k": 2,
            "threshold": -1.0, "options": {"num_predict": 6}}
    with httpx.stream("POST", s.url + "/api/rag/ask", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
    assert lines[-1]["done"] and not any(x["done"] for x in lines[:-1])
    last = lines[-1]
    assert last["collection"] == "notes@2" and len(last["sources"]) == 2
    assert last["sources"][0]["source"].endswith(".md") and last["eval_count"] <= 6
    streamed = "".join(x["response"] for x in lines)
    whole = httpx.post(s.url + "/api/rag/ask", json={**body, "stream": False}, timeout=120).json()
    assert whole["done"] and whole["sources"] == last["sources"]
    assert whole["answer"] and last["answer"] == streamed.strip()  # (its citations checked)
    # nothing near enough: the model is not asked
    idk = httpx.post(s.url + "/api/rag/ask", json={**body, "threshold": 1.01, "stream": False}).json()
    assert idk["answer"] == IDK and idk["below_threshold"]
    for bad, msg in (({**body, "collection": "nope"}, "nope"), ({**body, "k": 0}, "k must"),
                     ({**body, "question": " "}, "required")):
        r = httpx.post(s.url + "/api/rag/ask", json=bad)
        assert r.status_code in (400, 404) and msg in r.json()["error"]


def test_modelfile_rag_binds_a_model_and_round_trips(tiny_srv, tmp_path):
    _, reg = tiny_srv
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM tiny\nPARAMETER rag notes\nPARAMETER temperature 0\nPARAMETER num_predict 4\n")
    entry = create(reg, "bot", mf)
    assert entry.manifest.params["rag"] == ["notes"]
    text = to_modelfile(entry, reg)
    assert "PARAMETER rag notes\n" in text
    assert ("rag", "notes") in parse(text).parameters
    model = oficina.load("bot", registry=reg)
    assert model.options.rag == ("notes",)
    model.chat([{"role": "user", "content": "Where did the cat sit?"}])
    assert model.last_stats.prompt_tokens > 40  # the documents were in the prompt
    for body, err in (("PARAMETER rag nope\n", "no collection|not found|nope"),
                      ("PARAMETER rag notes\nPARAMETER rag notes@1\n", "one collection")):
        (tmp_path / "Bad").write_text("FROM tiny\n" + body)
        with pytest.raises(ModelfileError, match=err):
            create(reg, "bad", tmp_path / "Bad")
    assert reg.find("bad") is None


# -- the real models ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_srv(real_registry, tmp_path_factory):
    from oficina.registry.sources import import_path

    reg = Registry(tmp_path_factory.mktemp("home"))
    for name in ("minilm", "smollm2"):
        import_path(reg, real_registry.snapshot(real_registry.find(name)), name, root=real_registry.home)
    C.create("glass", C.CollectionConfig("minilm"), reg)
    C.ingest("glass", [DATA / "docs"], registry=reg)
    mf = tmp_path_factory.mktemp("mf") / "Modelfile"
    mf.write_text("FROM smollm2\nPARAMETER rag glass\nPARAMETER temperature 0\n"
                  "PARAMETER num_predict 32\n")
    create(reg, "glass-bot", mf)
    s = Running(reg.home, slots=2, max_queue=8)
    yield s, reg
    s.stop()


QUESTIONS = {q.question: q for q in E.read_questions(DATA / "questions.jsonl")}


@pytest.mark.real
@pytest.mark.slow
def test_real_rag_ask_route_and_a_bound_model(real_srv):
    s, reg = real_srv
    q = QUESTIONS["Who founded the Brisko workshop?"]
    r = httpx.post(s.url + "/api/rag/ask", json={"question": q.question, "collection": "glass",
                                                 "model": "smollm2", "hybrid": True,
                                                 "stream": False}, timeout=300).json()
    assert E.contains(r["answer"], q.answer), r["answer"]
    cited = r["citations"] + r["attributed"]
    assert cited and all(r["sources"][n - 1]["source"].endswith(q.sources[0]) for n in cited)
    # the bound model answers through the collection, on the server and from Python
    chat = ollama.Client(host=s.url).chat(model="glass-bot", messages=[
        {"role": "user", "content": q.question}])
    assert E.contains(chat.message.content, q.answer), chat.message.content
    local = oficina.load("glass-bot", registry=reg).chat([{"role": "user", "content": q.question}])
    assert E.contains(local, q.answer), local  # (not the same text: each prompt has its own nonce)
    far = ollama.Client(host=s.url).chat(model="glass-bot", messages=[
        {"role": "user", "content": "Which programming language was Linux written in?"}])
    assert far.message.content == IDK
