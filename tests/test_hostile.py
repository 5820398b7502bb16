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


# -- 7. JSONL with raw line separators inside strings is valid --------------------------------------



def _jsonl_with_separators(path: Path, rows: list[dict]) -> Path:
    # ensure_ascii=False keeps U+2028/2029/0085 raw inside the strings, as scraped text has them
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_keeps_raw_unicode_line_separators(tmp_path):
    from oficina.align import pairs
    from oficina.evaluation.generation import check_item
    from oficina.evaluation.tasks import read_jsonl
    from oficina.tuning import data

    odd = "one\u2028two\u2029three\u0085four"
    rows = [{"instruction": f"say {odd}", "output": odd}, {"instruction": "b", "output": "c"}]
    ds = data.read(_jsonl_with_separators(tmp_path / "train.jsonl", rows))
    assert [r.fields["output"] for r in ds.records] == [odd, "c"]
    assert [r.where.rsplit(":", 1)[1] for r in ds.records] == ["1", "2"]

    prefs = [{"prompt": odd, "chosen": "yes\u2028", "rejected": "no"}]
    assert pairs.read(_jsonl_with_separators(tmp_path / "prefs.jsonl", prefs)).records[0].fields["prompt"] == odd

    raw = open(ROOT / "oficina/data/eval/gen.jsonl", encoding="utf-8").readline()
    item = json.loads(raw)
    item = {k: (v + "\u2028" if isinstance(v, str) else v) for k, v in item.items()}
    items = read_jsonl(_jsonl_with_separators(tmp_path / "gen.jsonl", [item]), check_item)
    assert len(items) == 1


def test_jsonl_line_numbers_count_newlines_only(tmp_path):
    from oficina.tuning import data

    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a\u2028b\u0085c"}\n\n{"text": 3\n', encoding="utf-8")
    with pytest.raises(FormatError, match=r"bad\.jsonl:3: not valid JSON"):
        data.read(p)


def test_text_and_csv_keep_separators(tmp_path):
    from oficina.tuning import data

    t = tmp_path / "doc.txt"
    t.write_text("first\u2028still first\n\nsecond\n", encoding="utf-8")
    assert [r.fields["text"] for r in data.read(t).records] == ["first\u2028still first", "second"]
    c = tmp_path / "l.csv"
    c.write_text('text,label\n"good\u2028film",pos\nbad,neg\n', encoding="utf-8")
    ds = data.read(c)
    assert [r.fields["text"] for r in ds.records] == ["good\u2028film", "bad"]
    assert [r.where.rsplit(":", 1)[1] for r in ds.records] == ["2", "3"]
