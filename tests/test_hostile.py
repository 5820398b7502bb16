"""Hostile input (issue #11): every file here is built in the test to attack one weak spot, and
each must end in one clear ``oficina.errors`` line (``error: ...`` from the CLI, non-zero exit),
quickly, leaving nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oficina.errors import FormatError, OficinaError
from oficina.formats import template as tpl

import tiny

ROOT = Path(__file__).resolve().parents[1]
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

NESTED_RANGE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
POWER = "{{ 10 ** (10 ** 10) }}"  # Jinja groups ** from the left
DOUBLING = ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
            "{% endfor %}{{ ns.s }}")
HOSTILE_TEMPLATES = {"nested range": NESTED_RANGE, "power": POWER, "doubling": DOUBLING,
                     "repeat": "{{ 'a' * 10 ** 12 }}", "pad": "{{ 'x'.ljust(10 ** 11) }}",
                     "plus": "{% set ns = namespace(s=[1]) %}{% for i in range(64) %}"
                             "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}"}


def oficina(*args, home: Path, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OFICINA_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "oficina", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The process failed with exactly one ``error: ...`` line (no traceback) containing words."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "internal error" not in lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tok():
    return tiny.tokenizer()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    tiny.build("llama", folder)
    return folder


# -- 1. templates that never finish -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_hostile_template_is_stopped_by_the_budget(name, tok):
    start = time.perf_counter()
    with pytest.raises(FormatError, match="chat template"):
        tpl.render_chat(HOSTILE_TEMPLATES[name], MSGS, tok)
    assert time.perf_counter() - start < tpl.TIME_BUDGET_S + 3


def test_budgeted_renderer_matches_transformers(tok):
    """The sandbox with budgets renders what apply_chat_template renders."""
    for template in (tiny.CHAT_TEMPLATE,
                     "{{ bos_token }}{% for m in messages %}{{ m.role | upper }}: {{ m.content | tojson }}"
                     "{% if not loop.last %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
                     "\nASSISTANT:{% endif %}{{ '-' * 3 }}{{ 2 ** 10 }}{{ 'a' ~ 'b' }}"):
        for msgs in (MSGS, MSGS[1:]):
            assert tpl.render_chat(template, msgs, tok) == tok.apply_chat_template(
                msgs, chat_template=template, tokenize=False, add_generation_prompt=True)


def test_hostile_chat_template_jinja_in_an_hf_folder(llama_dir, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    for p in llama_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "chat_template.jinja").write_text(NESTED_RANGE)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    start = time.perf_counter()
    proc = oficina("run", str(folder), "hi", "--num-predict", "2", home=tmp_path / "home")
    one_error_line(proc, "chat template")
    assert time.perf_counter() - start < 100


def test_hostile_template_in_a_gguf(llama_dir, tmp_path):
    from oficina.formats.gguf_export import export_gguf

    src = tmp_path / "src"
    src.mkdir()
    for p in llama_dir.iterdir():
        (src / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["chat_template"] = POWER
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    (src / "chat_template.jinja").unlink(missing_ok=True)
    export_gguf(src, tmp_path / "evil.gguf")
    proc = oficina("run", str(tmp_path / "evil.gguf"), "hi", "--num-predict", "2", home=tmp_path / "home")
    one_error_line(proc, "chat template")


def test_hostile_modelfile_template(llama_dir, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text(f"FROM {llama_dir}\nTEMPLATE \"\"\"{DOUBLING}\"\"\"\n")
    home = tmp_path / "home"
    assert oficina("create", "evil", "-f", str(mf), home=home).returncode == 0
    proc = oficina("run", "evil", "hi", "--num-predict", "2", home=home)
    one_error_line(proc, "chat template")
