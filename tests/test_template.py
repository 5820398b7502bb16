"""Chat templates from outside: Ollama's Go templates translated, Jinja rendered in a sandbox."""

import pytest

from oficina.errors import FormatError
from oficina.formats.template import go_to_jinja, is_go_template, render_chat
from tiny import tokenizer

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Sky colour?"}]

# From Ollama's docs/modelfile.md (TEMPLATE section) and template docs.
LEGACY = ('{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
          '{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}'
          '<|im_start|>assistant\n{{ .Response }}<|im_end|>\n')
MESSAGES = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
            '<|im_start|>assistant\n')
CONDITIONAL = ('{{- range $i, $m := .Messages }}{{- if eq .Role "user" }}[INST] {{ .Content }} [/INST]'
               '{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{- else }}<<SYS>>{{ .Content }}<</SYS>>'
               '{{- end }}{{- end }}')


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


def test_detects_go_templates():
    assert is_go_template(LEGACY) and is_go_template(MESSAGES)
    assert not is_go_template("{% for m in messages %}{{ m.content }}{% endfor %}")


def test_legacy_prompt_response_template_renders_each_turn(tok):
    out = render_chat(LEGACY, MSGS, tok)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\nHello<|im_end|>\n"
                   "<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n")


def test_messages_template(tok):
    out = render_chat(MESSAGES, MSGS, tok)
    assert out.endswith("<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n")
    assert out.startswith("<|im_start|>system\nBe brief.")


def test_conditionals_and_variables(tok):
    out = render_chat(CONDITIONAL, MSGS, tok)
    assert out == "<<SYS>>Be brief.<</SYS>>[INST] Hi [/INST] Hello</s>[INST] Sky colour? [/INST]"


@pytest.mark.parametrize("bad", ["{{ range .Tools }}x{{ end }}", "{{ if .System }}open",
                                 "{{ printf \"%s\" .Prompt }}", "{{ end }}"])
def test_untranslatable_go_is_refused(bad):
    with pytest.raises(FormatError):
        go_to_jinja(bad)


def test_jinja_sandbox_blocks_escape(tok):
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(FormatError, match="chat template"):
        render_chat(evil, MSGS, tok)


def test_hf_jinja_template(tok):
    out = render_chat(tok.chat_template, MSGS[1:2], tok)
    assert out == "<|user|>Hi</s><|assistant|>"
