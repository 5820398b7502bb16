"""Real servers for tests: uvicorn in a thread on a free loopback port (any app, or oficina's
own over a registry: ``Running``), or a second server process (the upstream of a remote model)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from oficina.registry.registry import Registry
from oficina.registry.sources import import_path
from oficina.serve.app import create_app
from oficina.serve.auth import Policy
from oficina.serve.native import Server
from oficina.serve.pool import Pool

# A second server process: `oficina serve`'s app over the home in argv[1], on the port in argv[2],
# with its own operations (log, metrics), so a test can see what reached it.
UPSTREAM = """
import sys, torch, uvicorn
torch.set_num_threads(1)
from oficina.serve.app import create_app
from oficina.serve.native import Server
from oficina.serve.operate import Operations
from oficina.serve.pool import Pool
home, port = sys.argv[1], int(sys.argv[2])
ops_home = sys.argv[3] if len(sys.argv) > 3 else home      # where its log and cache go
cache = len(sys.argv) > 4 and sys.argv[4] == "cache"
app = create_app(Server(Pool(home, slots=2)), operations=Operations(ops_home, cache=cache))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Uvicorn:
    """uvicorn serving ``app`` in a thread, on a loopback port bound before it starts (so no other
    process can take the port in between)."""

    def __init__(self, app, **config):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", **config}))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


@contextlib.contextmanager
def serving(app):
    """``Uvicorn`` for the length of a ``with``; yields the base URL."""
    running = Uvicorn(app, lifespan="on")
    try:
        yield running.url
    finally:
        running.stop(10)


class Running:
    """oficina's own app over the registry at ``home`` (``pool_kw`` to its Pool), served by
    ``Uvicorn``; ``server`` is the oficina Server, for the test to look inside."""

    def __init__(self, home: Path, policy: Policy | None = None, **pool_kw):
        self.pool = Pool(home, **pool_kw)
        self.server = Server(self.pool)
        self.app = create_app(self.server, policy)
        self._uv = Uvicorn(self.app, log_level="error", timeout_graceful_shutdown=5)
        self.port = self._uv.port

    @property
    def url(self) -> str:
        return self._uv.url

    def counts(self) -> tuple[int, int]:
        return self.pool.running(), self.pool.waiting()

    def wait_idle(self, timeout: float = 20.0) -> tuple[int, int]:
        deadline = time.time() + timeout
        while self.counts() != (0, 0) and time.time() < deadline:
            time.sleep(0.05)
        return self.counts()

    def stop(self) -> None:
        self._uv.stop()


def tiny_registry(home: Path, work: Path):
    """A registry with a tiny random llama ("tiny") and a tiny bert ("tinybert")."""
    import tiny

    reg = Registry(home)
    for family, name in (("llama", "tiny"), ("bert", "tinybert")):
        folder = work / name
        tiny.build(family, folder)
        import_path(reg, folder, name)
    return reg


def start_upstream(home: Path, port: int, ops_home: Path | None = None, cache: bool = False) -> subprocess.Popen:
    import oficina

    root = str(Path(oficina.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(home), str(port), str(ops_home or home),
                          "cache" if cache else "no-cache"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"upstream exited: {p.stderr.read().decode()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=1)
            return p
        except httpx.HTTPError:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError("upstream did not start")


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
