"""Loaded models: load on first use, keep for ``keep_alive`` after the last request (Ollama's
default 5 minutes), unload the least recently used one when a memory budget would be passed.

Each loaded decoder gets a runner and its own scheduler thread; encoders (embedding models) get
neither, only a lock (their forward pass runs in a worker thread, one at a time).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OficinaError
from ..generation.session import load
from ..registry.registry import Registry
from ..registry.sources import resolve
from .remote import RemoteModel
from .scheduler import Scheduler

DEFAULT_KEEP_ALIVE = 300.0
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any, default: float = DEFAULT_KEEP_ALIVE) -> float | None:
    """Seconds to keep a model after a request, as Ollama reads ``keep_alive``: a number of
    seconds or a Go duration ("5m", "1h30m", "10s"); negative = forever (None); 0 = unload now."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise OficinaError(f"keep_alive must be a duration such as \"5m\" or a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = re.findall(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
            if not parts or "".join(n + u for n, u in parts) != text.lstrip("+"):
                raise OficinaError(f"keep_alive must be a duration such as \"5m\" or a number of "
                                   f"seconds, got {value!r}") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise OficinaError(f"keep_alive must be a duration such as \"5m\" or a number of seconds, got {value!r}")
    return None if seconds < 0 else seconds


def model_bytes(torch_model) -> int:
    return sum(t.numel() * t.element_size() for t in list(torch_model.parameters()) + list(torch_model.buffers()))


def open_runner(model, slots: int):
    """The runner the scheduler drives for ``model`` (an ``api.Model``) with ``slots`` sequences
    live at once: the library's choice (the fast batched decoder when the architecture allows,
    transformers otherwise; ``capabilities.note`` says which and why)."""
    model.max_batch = slots
    return model.runner


def resident_bytes(model) -> int:
    """Memory the model's weights take: the torch module when one is loaded, else the files
    (the fast runner keeps GGUF weights packed, about their size on disk)."""
    if getattr(model.loaded, "loaded", True):
        return model_bytes(model.torch_model)
    return model.entry.manifest.size if model.entry else 0


@dataclass
class Served:
    name: str                      # registry name, e.g. "smollm2:latest"
    digest: str
    model: Any                     # api.Model
    size: int                      # bytes of weights and buffers in memory
    load_seconds: float
    scheduler: Scheduler | None    # None for models that do not generate
    keep_alive: float | None = DEFAULT_KEEP_ALIVE
    expires_at: float | None = None   # time.time(); None = never
    active: int = 0                # requests in flight (embeddings included)
    lock: threading.Lock = field(default_factory=threading.Lock)   # embeddings: one at a time
    last_used: float = field(default_factory=time.time)
    remote: bool = False           # an OpenAI-compatible upstream answers (remote.py); model is a RemoteModel

    @property
    def generates(self) -> bool:
        return self.scheduler is not None

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()


class Pool:
    def __init__(self, home: Path | str | None = None, keep_alive: float | None = DEFAULT_KEEP_ALIVE,
                 memory_budget: int | None = None, slots: int = 8, max_queue: int = 64,
                 runner_factory: Callable | None = None):
        self.home = home
        self.keep_alive = keep_alive
        self.memory_budget = memory_budget
        self.slots = slots
        self.max_queue = max_queue
        self.runner_factory = runner_factory or open_runner
        self.loaded: dict[str, Served] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def registry(self) -> Registry:
        """A fresh connection: SQLite connections are per thread."""
        return Registry(self.home)

    # -- loading -------------------------------------------------------------------------------
    async def get(self, name: str, keep_alive: Any = None) -> Served:
        """The loaded model for ``name``, loading it first if needed (in a worker thread)."""
        seconds = parse_keep_alive(keep_alive, self.keep_alive if self.keep_alive is not None else -1)
        entry = await asyncio.to_thread(lambda: _resolve(self.registry(), name))
        lock = self._locks.setdefault(entry.name, asyncio.Lock())
        async with lock:
            served = self.loaded.get(entry.name)
            if served is not None and served.digest != entry.digest:   # the name moved on
                await self.unload(entry.name)
                served = None
            if served is None:
                served = await asyncio.to_thread(self._load, entry)
                await self._fit_budget(served.size, keep=entry.name)
                self.loaded[entry.name] = served
            served.keep_alive = seconds
            served.active += 1
            served.last_used = time.time()
            served.expires_at = None
        return served

    def release(self, served: Served) -> None:
        """A request is done with ``served``: start its keep_alive clock."""
        served.active = max(0, served.active - 1)
        served.last_used = time.time()
        if served.active == 0:
            ka = served.keep_alive
            served.expires_at = None if ka is None else time.time() + ka

    def _load(self, entry) -> Served:
        if entry.manifest.format == "remote":
            return Served(entry.name, entry.digest, RemoteModel.from_entry(entry), 0, 0.0, None, remote=True)
        reg = self.registry()
        t0 = time.perf_counter()
        model = load(entry.name, registry=reg)
        scheduler, extra = None, 0
        if model.info.kind == "decoder-only":
            runner = self.runner_factory(model, self.slots)
            extra = runner.prepare_serving()
            scheduler = Scheduler(runner, self.max_queue, name=entry.name)
        return Served(entry.name, entry.digest, model, resident_bytes(model) + extra,
                      time.perf_counter() - t0, scheduler)

    async def _fit_budget(self, incoming: int, keep: str) -> None:
        """Unload idle models, least recently used first, until ``incoming`` more bytes fit."""
        if self.memory_budget is None:
            return
        while sum(s.size for s in self.loaded.values()) + incoming > self.memory_budget:
            idle = [s for s in self.loaded.values() if s.active == 0 and s.name != keep]
            if not idle:
                return          # everything is busy: go over budget rather than fail a request
            await self.unload(min(idle, key=lambda s: s.last_used).name)

    async def unload(self, name: str) -> bool:
        served = self.loaded.pop(name, None)
        if served is None:
            return False
        await asyncio.to_thread(served.close)
        return True

    async def reap(self) -> None:
        """Unload idle models whose keep_alive has run out."""
        now = time.time()
        for s in list(self.loaded.values()):
            if s.active == 0 and s.expires_at is not None and s.expires_at <= now:
                await self.unload(s.name)

    async def run_reaper(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            await self.reap()

    async def close(self) -> None:
        for name in list(self.loaded):
            await self.unload(name)

    # -- views -----------------------------------------------------------------------------------
    def running(self) -> int:
        return sum(s.scheduler.running for s in self.loaded.values() if s.scheduler)

    def waiting(self) -> int:
        return sum(s.scheduler.waiting for s in self.loaded.values() if s.scheduler)


def _resolve(reg: Registry, name: str):
    if not isinstance(name, str) or not name.strip():
        raise OficinaError("model is required")
    return resolve(name, reg, auto_pull=False)
