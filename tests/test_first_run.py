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
                   r"|eval rate|done reason|load duration|total duration):\s")
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
    p = oficina("run", "smollm2", "What is the capital of France?", "--temperature", "0",
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
            "print(m.generate('What is the capital of France?', temperature=0, num_predict=12))\n")
    p = oficina(code=code)
    assert p.returncode == 0, p.stderr
    assert "Paris" in p.stdout and p.stderr == "", (p.stdout, p.stderr)
