"""The prompt library: immutable versions, labels with history, strict sandboxed templates,
prompt tests on a tiny model, and `oficina run --prompt`."""

import pytest

import oficina
from oficina.cli import main
from oficina.prompts import PromptError, PromptStore, parse, read, test_prompt
from oficina.registry.registry import Registry
from oficina.registry.sources import pull
from tiny import build

GOOD = """description: greet
template: |
  Say hello to {{ name }}
  in {{ language }}.
variables:
  name: {description: who}
  language: {default: English}
parameters: {temperature: 0, num_predict: 8}
examples:
  - vars: {name: Ana}
    checks: [{min_chars: 0}]
  - vars: {name: Rui, language: Portuguese}
    expect: zzqq-never-said
"""


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_versions_are_immutable_and_labels_move(home, tmp_path):
    store = PromptStore()
    p1, new = store.add("greet", read(write(tmp_path, GOOD)))
    assert (p1.version, new) == (1, True)
    assert store.add("greet", read(write(tmp_path, GOOD)))[1] is False  # same content: no version
    p2, new = store.add("greet", read(write(tmp_path, GOOD.replace("Say hello", "Say hi"))))
    assert (p2.version, new) == (2, True)
    assert store.get("greet@1").spec.template.startswith("Say hello")  # v1 unchanged
    assert store.get("greet").version == 2
    assert store.label("greet", "production", 1) is None
    assert store.get("greet:production").version == 1
    assert store.label("greet", "production", 2) == 1
    assert store.get("greet:production").render({"name": "Ana"}) == "Say hi to Ana\nin English.\n"
    versions, moves, _ = store.history("greet")
    assert [v.version for v in versions] == [1, 2]
    assert [(m[0], m[1], m[2]) for m in moves] == [("production", 1, None), ("production", 2, 1)]
    assert "-  Say hello to {{ name }}\n+  Say hi to {{ name }}" in store.diff("greet@1", "greet@2")
    with pytest.raises(PromptError, match="no label 'staging'"):
        store.get("greet:staging")
    with pytest.raises(PromptError, match="no version 9"):
        store.label("greet", "production", 9)


@pytest.mark.parametrize("text,message", [
    ("template: |\n  Hi {{ name }}\n  and {{ other }}\nvariables: [name]\n",
     "p.yaml:3: template uses 'other', which is not declared"),
    ("variables: [name, extra]\ntemplate: Hi {{ name }}\n",
     "p.yaml:1: variable 'extra' is declared but the template never uses it"),
    ("template: |\n  ok\n  {% if %}\nvariables: []\n", "p.yaml:3: template syntax error"),
    ("template: Hi\nvariables: []\nshape: x\n", "p.yaml:3: unknown field 'shape'"),
    ("template: Hi {{ n }}\nvariables: [n]\nparameters: {temperature: -1}\n",
     "p.yaml:3: temperature must be >= 0"),
    ("template: Hi {{ n }}\nvariables: [n]\nexamples:\n  - vars: {m: 1}\n",
     "example 1: unknown variable(s) m"),
    ("template: [unclosed\n", "p.yaml:2: not valid YAML"),  # YAML finds it at the end
])
def test_bad_prompt_files_name_file_and_place(home, tmp_path, text, message):
    with pytest.raises(PromptError) as e:
        read(write(tmp_path, text))
    assert message in str(e.value)


def test_nothing_is_stored_when_a_file_is_bad(home, tmp_path, capsys):
    p = write(tmp_path, "template: Hi {{ x }}\nvariables: []\n")
    assert main(["prompt", "add", "bad", "-f", str(p)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "p.yaml:1" in err
    assert PromptStore().names() == []
    bad = tmp_path / "u.yaml"
    bad.write_bytes(b"template: ok\n\xff\n")
    with pytest.raises(PromptError, match=r"u.yaml:2: not valid UTF-8"):
        read(bad)


def test_templates_cannot_reach_python_internals():
    spec = parse("template: \"{{ t.__class__.__mro__[1].__subclasses__() }}\"\nvariables: [t]\n")
    with pytest.raises(PromptError, match="refused by the sandbox: access to attribute '__class__'"):
        spec.render({"t": "x"})
    spec = parse("template: \"{{ t.format.__globals__ }}\"\nvariables: [t]\n")
    with pytest.raises(PromptError, match="refused by the sandbox"):
        spec.render({"t": "x"})


def test_render_needs_every_variable_without_default():
    spec = parse(GOOD)
    with pytest.raises(PromptError, match="variable 'name' has no value"):
        spec.render({})
    assert spec.render({"name": "Eva", "language": "French"}) == "Say hello to Eva\nin French.\n"


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    build("llama", root / "llama")
    pull(Registry(root / "home"), str(root / "llama"), name="tiny")
    return root / "home"


def test_prompt_test_reports_pass_fail_and_scores(tiny_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OFICINA_HOME", str(tiny_home))
    store = PromptStore()
    p, _ = store.add("greet", read(write(tmp_path, GOOD)))
    model = oficina.load("tiny")
    r = test_prompt(p, model)
    assert [x.passed for x in r.results] == [True, False]
    assert r.passed == 1 and r.score == 0.5
    assert r.results[0].answer == model.generate(p.render({"name": "Ana"}), temperature=0, num_predict=8)
    assert main(["prompt", "test", "greet", "--model", "tiny"]) == 1  # a failing example fails the command
    out = capsys.readouterr().out
    assert "greet@1 on tiny:latest@1: 1/2 passed, score 0.50" in out
    _, _, tests = store.history("greet")
    assert [(t[0], t[2], t[3]) for t in tests] == [(1, 1, 2)]


def test_run_with_a_library_prompt(tiny_home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OFICINA_HOME", str(tiny_home))
    store = PromptStore()
    p, _ = store.add("greet2", read(write(tmp_path, GOOD)))
    expected = oficina.load("tiny").generate(p.render({"name": "Ana", "language": "Portuguese"}),
                                             temperature=0, num_predict=8)
    assert main(["run", "tiny", "--prompt", "greet2", "--var", "name=Ana", "--var", "language=Portuguese"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["run", "tiny", "--prompt", "greet2", "--var", "nome=Ana"]) == 1
    assert "unknown variable(s) nome" in capsys.readouterr().err
