"""``oficina serve`` as a process: it starts, says where it listens, answers, `oficina ps` reads it,
and Ctrl-C (SIGINT) or SIGTERM during a stream lets the stream finish before it exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from servers import tiny_registry

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow      # each test starts a Python process that imports torch


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    tiny_registry(home, tmp_path / "models")
    e = dict(os.environ, OFICINA_HOME=str(home), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    e.pop("OFICINA_HOST", None)
    return e


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_ps_and_a_signal_during_stream(env, sig):
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "oficina", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        assert "tiny" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(url + "/api/version")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        lines: list[dict] = []

        def stream():
            body = {"model": "tiny", "prompt": "The cat", "options": {"num_predict": 150, "temperature": 0}}
            with httpx.stream("POST", url + "/api/generate", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    lines.append(json.loads(line))     # a half line would not parse

        t = threading.Thread(target=stream)
        t.start()
        while not lines:
            time.sleep(0.02)
        ps = subprocess.run([sys.executable, "-m", "oficina", "ps", "--port", str(port)], env=env,
                            capture_output=True, text=True, timeout=60)
        assert ps.returncode == 0 and "tiny" in ps.stdout and "RUNNING" in ps.stdout, ps.stderr
        proc.send_signal(sig)
        t.join(120)
        assert lines[-1]["done"] and lines[-1]["eval_count"] == 150      # the stream was not cut
        assert not t.is_alive()
        assert proc.wait(60) == 0                                        # exits 0, within a bound
        out, err = proc.communicate()
        assert "stopped" in out
        assert "Traceback" not in err and "Error" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_open_bind_without_key(env):
    r = subprocess.run([sys.executable, "-m", "oficina", "serve", "--host", "0.0.0.0", "--port", str(_port())],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: binding to 0.0.0.0") and "Traceback" not in r.stderr


def test_key_command_stores_only_the_digest(env, tmp_path):
    from oficina.serve.auth import digest, load_keys

    f = tmp_path / "keys.toml"
    r = subprocess.run([sys.executable, "-m", "oficina", "key", "app", "--scope", "inference", "--file", str(f)],
                       env=env, capture_output=True, text=True, timeout=60)
    secret = r.stdout.strip()
    assert r.returncode == 0 and secret not in f.read_text()
    (k,) = load_keys(f)
    assert k.id == "app" and k.scope == "inference" and k.sha256 == digest(secret)
