"""The README's examples work as printed: every ``python`` block runs to the end (on the real
SmolLM2, in a subprocess, as a reader would paste it), and every ``oficina ...`` command in a
transcript (``$ oficina ...``) or a ``sh`` block parses with today's flags. Commands are parsed,
not run: running them all is the whole suite's work (pulls, tuning, evaluation) many times over,
and the tests named beside each section run what they claim."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import real_home

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(lang: str | None = None) -> list[tuple[int, str, str]]:
    """(line number, language, text) of each fenced block of README.md."""
    text = (ROOT / "README.md").read_text()
    out = []
    for m in FENCE.finditer(text):
        if lang is None or m[1] == lang:
            out.append((text.count("\n", 0, m.start()) + 1, m[1], m[2]))
    return out


def commands() -> list[tuple[int, list[str]]]:
    """(README line, argv after `oficina`) for each command a reader would type."""
    out = []
    for line0, lang, text in blocks():
        lines = text.splitlines()
        bare = lang == "" and not any(x.startswith("$ ") for x in lines)  # a command shown alone
        i = 0
        while i < len(lines):
            n, line = i, lines[i]
            while line.endswith("\\") and i + 1 < len(lines):  # continuation lines
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            i += 1
            if line.startswith("$ "):
                line = line[2:]
            elif lang != "sh" and not (bare and line.startswith("oficina ")):
                continue
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # OMP_NUM_THREADS=1 oficina ...
                words.pop(0)
            if "|" in words:  # `oficina show x | tail -2`
                words = words[:words.index("|")]
            if words[:1] == ["oficina"]:
                out.append((line0 + n + 1, words[1:]))
    return out


def test_the_readme_has_examples():
    assert len(commands()) >= 30 and blocks("python")


@pytest.mark.parametrize("line,argv", commands(), ids=lambda v: str(v) if isinstance(v, int) else None)
def test_every_readme_command_parses(line, argv, capsys):
    from oficina.cli import parse

    try:
        args = parse(argv)
    except SystemExit:
        pytest.fail(f"README.md:{line}: `oficina {shlex.join(argv)}` does not parse: {capsys.readouterr().err}")
    assert getattr(args, "func", None), f"README.md:{line}: `oficina {shlex.join(argv)}` names no command"


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("line,code", [(n, t) for n, _, t in blocks("python")])
def test_readme_python_block_runs_to_the_end(line, code, real_registry):
    """Pasted as it is into Python with the test registry as OFICINA_HOME: it must end (a
    stream without num_predict ran until the context was full) and print what it promises."""
    env = {**os.environ, "OFICINA_HOME": str(real_home()), "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"README.md:{line}: {p.stderr[-2000:]}"
    assert p.stderr == "", p.stderr
    assert p.stdout.strip(), f"README.md:{line}: printed nothing"
