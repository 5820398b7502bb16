"""A real server for tests: uvicorn on a free loopback port in a thread, over a registry."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from oficina.serve.app import create_app
from oficina.serve.auth import Policy
from oficina.serve.native import Server
from oficina.serve.pool import Pool


class Running:
    def __init__(self, home: Path, policy: Policy | None = None, **pool_kw):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.pool = Pool(home, **pool_kw)
        self.server = Server(self.pool)
        self.app = create_app(self.server, policy)
        self._uv = uvicorn.Server(uvicorn.Config(self.app, "127.0.0.1", self.port, log_level="error",
                                                 timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._uv.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 30
        while not self._uv.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> tuple[int, int]:
        return self.pool.running(), self.pool.waiting()

    def wait_idle(self, timeout: float = 20.0) -> tuple[int, int]:
        deadline = time.time() + timeout
        while self.counts() != (0, 0) and time.time() < deadline:
            time.sleep(0.05)
        return self.counts()

    def stop(self) -> None:
        self._uv.should_exit = True
        self._thread.join(30)


def tiny_registry(home: Path, work: Path):
    """A registry with a tiny random llama ("tiny") and a tiny bert ("tinybert")."""
    import tiny
    from oficina.registry.registry import Registry
    from oficina.registry.sources import import_path

    reg = Registry(home)
    for family, name in (("llama", "tiny"), ("bert", "tinybert")):
        folder = work / name
        tiny.build(family, folder)
        import_path(reg, folder, name)
    return reg
