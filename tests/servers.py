"""Real servers for tests: uvicorn in a thread on a free loopback port, or a second server
process (the upstream of a remote model)."""

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


@contextlib.contextmanager
def serving(app):
    """uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)
        sock.close()


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
