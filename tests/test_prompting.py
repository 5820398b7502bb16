"""The one prompt builder (oficina/formats/prompt.py): `run` and `tune` build the same prompt for
a model whose Modelfile has a Go TEMPLATE; training text = inference prompt + answer + the
template's end of turn, and the answer span is the answer."""

from __future__ import annotations

import pytest

import oficina
import tiny
from oficina.create import create
from oficina.errors import FormatError
from oficina.formats import prompt
from oficina.tuning import data as tdata
from oficina.tuning import session, tasks

# Ollama's docs/modelfile.md TEMPLATE example (a legacy .Prompt/.Response template)
LEGACY = ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
          '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}'
          '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n')
MESSAGES = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
            '<|im_start|>assistant\n')
QUESTION, ANSWER = "Where does the cat sleep?", "On the sofa."
USER, ASSISTANT = {"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}


@pytest.fixture
def go_model(registry, tmp_path):
    tiny.build("llama", tmp_path / "base")
    mf = tmp_path / "Modelfile"
    mf.write_text(f'FROM {tmp_path / "base"}\nSYSTEM Be brief.\nTEMPLATE """{LEGACY}"""\n')
    create(registry, "go-template", mf)
    return "go-template"


def test_tune_and_run_build_the_same_prompt_for_a_go_template_model(go_model, registry):
    model = oficina.load(go_model, registry=registry)
    run_ids = model.encode_chat([USER])  # what `oficina run` / chat sends

    base = session.open_base(go_model, registry)  # what `oficina tune` opens
    ctx = tasks.Context.for_model(base.tokenizer, base.manifest, 256)
    (ex,) = tasks.encode_causal(tdata.Record({"messages": [USER, ASSISTANT]}, "x:1"), "chat", ctx)

    inference = prompt.build([USER], model.tokenizer, model.template, model.system, model.messages)
    assert inference.text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                              f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    training = prompt.build([USER, ASSISTANT], base.tokenizer, ctx.template, ctx.system, ctx.messages,
                            train=True)
    assert training.text == inference.text + ANSWER + "<|im_end|>\n"
    ((a, b),) = training.answers
    assert (a, training.text[a:b]) == (len(inference.text), ANSWER)
    ((s, e),) = training.turns
    assert training.text[s:e] == ANSWER + "<|im_end|>\n"

    # in tokens: the training example starts with exactly the ids `run` sends, and only the
    # answer and its end of turn are trained
    assert ex.ids[:len(run_ids)] == run_ids
    trained = [i for i, label in zip(ex.ids, ex.target) if label != tasks.IGNORE]
    assert base.tokenizer.decode(trained) == ANSWER + "<|im_end|>\n"


def test_messages_go_template_trains_every_turn_without_the_trailing_generation_prompt():
    tok = tiny.tokenizer()
    msgs = [USER, ASSISTANT, {"role": "user", "content": "And the dog?"}, {"role": "assistant", "content": "Outside."}]
    p = prompt.build(msgs, tok, MESSAGES, train=True)
    assert p.text == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    assert [p.text[s:e] for s, e in p.turns] == [ANSWER + "<|im_end|>\n", "Outside.<|im_end|>\n"]
    assert [p.text[s:e] for s, e in p.answers] == [ANSWER, "Outside."]
    # each answer's turn starts where the inference prompt for the messages before it ends
    for k, (s, _) in zip((1, 3), p.turns):
        assert p.text[:s] == prompt.build(msgs[:k], tok, MESSAGES).text


def test_plain_transcript_for_models_without_a_template():
    tok = tiny.tokenizer()
    tok.chat_template = None
    assert prompt.build([USER], tok, system="Be brief.").text == \
        f"System: Be brief.\nUser: {QUESTION}\nAssistant:"
    p = prompt.build([USER, ASSISTANT], tok, train=True)
    assert p.text == f"User: {QUESTION}\nAssistant: {ANSWER}"
    assert [p.text[s:e] for s, e in p.answers] == [ANSWER]


def test_a_template_that_rewrites_history_is_refused_for_training_with_the_record():
    tok = tiny.tokenizer()
    last_only = "{{ messages[-1]['content'] }}"  # renders only the last message
    with pytest.raises(FormatError, match="x:7: the chat template does not render"):
        prompt.build([USER, ASSISTANT, USER, ASSISTANT], tok, last_only, train=True, where="x:7")
