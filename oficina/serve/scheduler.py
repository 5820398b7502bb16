"""Continuous batching: one thread per loaded model drives its runner over every live request.

Requests join and leave between decode steps (Orca, Yu et al. 2022, "iteration-level
scheduling"), and prompts are prefilled in chunks interleaved with decoding (Sarathi-Serve,
Agrawal et al. 2024; vLLM's chunked prefill), so a new prompt never stalls the streams already
running for a whole prefill. Each step the thread

1. drops requests whose client went away or whose deadline passed (their slot is free for the
   next step, so a disconnect never holds a slot longer than one step),
2. admits every waiting request that finds a free slot (cheap: a slot and its cached prefix;
   when nothing was running, after a short wait for the rest of a burst),
3. samples one token for every sequence that has logits and hands the text to its request,
4. fills the admitted prompts, oldest first, up to a budget of ``prefill_tokens`` ids, all of
   them in one pass over the weights (a burst of chat prompts is prefilled together, not one
   after another; a long prompt goes in budget-sized chunks, so the running streams stall for
   at most one budget), and
5. runs one batched ``runner.decode`` for all sequences that go on and for every prompt whose
   fill is complete (its last id: that step's logits are its first).

Requests talk to the thread through a bounded queue (``submit`` raises ``Busy`` past it; the HTTP
layer answers 503 + Retry-After) and get their pieces back on an ``asyncio.Queue`` through
``loop.call_soon_threadsafe``, so handlers stay async and never block the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import OficinaError
from ..generation.runner import Runner, SlotsFull
from .sequence import Finished, Sequence

# Prompt ids prefilled per step (Sarathi-Serve's token budget): the knob between a new request's
# time to first token (more) and the running streams' inter-token time (fewer). 512 takes a burst
# of eight chat prompts in one pass.
PREFILL_TOKENS = 512
# When idle, how long the first request of a burst waits for the others (see Scheduler._gather):
# at most BATCH_WAIT seconds, and only while another arrives within BATCH_QUIET of the last. A
# lone request pays BATCH_QUIET once; eight sent together reached the scheduler within 52 ms.
BATCH_WAIT = 0.1
BATCH_QUIET = 0.015


class Busy(OficinaError):
    """The model's queue is full; the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Piece:
    text: str


@dataclass
class Failed:
    error: BaseException


@dataclass
class Job:
    """One generation a handler asked for. ``make`` builds the per-sequence decoding state on the
    scheduler thread (it may compile a grammar: not on the event loop)."""

    make: Callable[[Runner], Sequence]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    deadline: float | None = None          # time.monotonic() after which it is cut
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None        # when it left the queue (prefill began)

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    def cancel(self) -> None:
        self.cancelled.set()


class Scheduler:
    """Drives one runner. ``running`` and ``waiting`` are what /api/ps and the tests read."""

    def __init__(self, runner: Runner, max_queue: int = 64, name: str = "model", reuse_prefix: bool = True,
                 prefill_tokens: int = PREFILL_TOKENS, batch_wait: float = BATCH_WAIT, batch_quiet: float = BATCH_QUIET):
        self.runner = runner
        self.max_queue = max_queue
        self.prefill_tokens = max(1, prefill_tokens)
        self.batch_wait, self.batch_quiet = batch_wait, batch_quiet
        # A new request starts from the longest cached prefix of its prompt (a chat's earlier
        # turns, a shared system prompt); tests/test_serve_real.py repeats a greedy request to
        # check it answers as a fresh prefill does.
        self.reuse_prefix = reuse_prefix
        self._waiting: collections.deque[Job] = collections.deque()
        self._live: dict[int, tuple[Job, Sequence]] = {}   # slot -> (job, its decoding state)
        self._filled: dict[int, int] = {}   # slot -> prompt tokens cached so far, while prefilling (admission order)
        self._reused: dict[int, int] = {}   # slot -> of those, how many came from a cached prefix
        self._cv = threading.Condition()
        self._stop = False
        self.steps = 0
        self.last_used = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"oficina-scheduler-{name}", daemon=True)
        self._thread.start()

    # -- what handlers call ------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._live)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> Job:
        with self._cv:
            if self._stop:
                raise Busy("the model is being unloaded; retry", retry_after=1)
            # Free slots are not queue places taken: a burst that arrives while the thread is
            # mid-step fills them at the next step.
            free = max(0, self.runner.capabilities.max_batch - len(self._live))
            if len(self._waiting) >= self.max_queue + free:
                raise Busy(f"server busy: {len(self._waiting)} requests already waiting for this model; retry later",
                           retry_after=max(1, len(self._waiting) // max(1, self.runner.capabilities.max_batch)))
            self._waiting.append(job)
            self.last_used = time.monotonic()
            self._cv.notify()
        return job

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work, let live and queued requests finish (up to ``timeout``), then free
        the runner."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)
        for job in list(self._waiting):
            job.emit(Failed(Busy("the model was unloaded before this request started; retry")))
        self._waiting.clear()
        self.runner.close()

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._live and not self._stop:
                    self._cv.wait()
                if self._stop and not self._waiting and not self._live:
                    return
                if not self._live:
                    self._gather()
            try:
                self._step()
            except Exception as e:  # a runner fault: fail everything live, keep serving
                for slot, (job, _) in list(self._live.items()):
                    self._finish(slot, job, Failed(e))

    def _gather(self) -> None:
        """Idle, with a request in: wait while more keep arriving (each within ``batch_quiet``
        seconds of the last, ``batch_wait`` in all), so that requests sent together are prefilled
        in one pass (Triton's dynamic batching delay). Never while sequences decode: running
        streams do not wait for newcomers. Called holding ``_cv``."""
        if self.batch_wait <= 0:
            return
        end = time.monotonic() + self.batch_wait
        seen = len(self._waiting)
        while not self._stop and (left := end - time.monotonic()) > 0:
            self._cv.wait(min(self.batch_quiet, left))
            if len(self._waiting) == seen:
                return
            seen = len(self._waiting)

    def _step(self) -> None:
        now = time.monotonic()
        for slot, (job, seq) in list(self._live.items()):
            if job.cancelled.is_set():
                self._finish(slot, job, None)
            elif job.deadline is not None and now > job.deadline:
                self._finish(slot, job, seq.finish("timeout"))
        self._admit()
        slots, tokens = [], []
        for slot, (job, seq) in list(self._live.items()):
            if seq.logits is None:          # still prefilling
                continue
            result = seq.step()
            if result.text:
                job.emit(Piece(result.text))
            if result.done is not None:
                self._finish(slot, job, result.done)
            else:
                slots.append(slot)
                tokens.append(result.token)
        ready = self._prefill()
        starting = len(slots)
        for slot in ready:                  # a filled prompt's last id rides in the decode step
            slots.append(slot)
            tokens.append(self._live[slot][1].prompt[-1])
        if not slots:
            return
        logits = self.runner.decode(slots, tokens)               # [B, V]
        for i, slot in enumerate(slots):
            job, seq = self._live[slot]
            if i < starting:
                seq.logits = logits[i]
            else:
                seq.start(logits[i], job, self._reused.pop(slot))
        self.steps += 1
        self.last_used = time.monotonic()

    def _admit(self) -> None:
        """Give every waiting request that finds a free slot its slot now; prefill comes after."""
        while True:
            with self._cv:
                if not self._waiting or len(self._live) >= self.runner.capabilities.max_batch:
                    return
                job = self._waiting.popleft()
            if job.cancelled.is_set():
                continue
            try:
                seq = job.make(self.runner)
            except Exception as e:
                job.emit(Failed(e))
                continue
            try:
                slot, reused = self.runner.acquire(seq.prompt if self.reuse_prefix else ())
            except SlotsFull:
                with self._cv:
                    self._waiting.appendleft(job)
                return
            job.started_at = time.monotonic()
            self._live[slot] = (job, seq)
            self._filled[slot] = self._reused[slot] = reused if self.reuse_prefix else 0

    def _prefill(self) -> list[int]:
        """Fill the admitted prompts, oldest first, up to ``prefill_tokens`` ids this step, all
        in one ``runner.fill_many`` pass (the prompts of a burst share one pass over the
        weights); returns the slots whose prompt is now cached but its last id, which then goes
        through the step's decode with the running sequences (the same one-row step that
        ``Runner.prefill`` ends with). A prompt cut by the budget stops at a multiple of
        ``capabilities.chunk`` (as the runner's own split), never where another prompt ended."""
        chunk = self.runner.capabilities.chunk
        budget, parts, ready = self.prefill_tokens, [], []
        for slot, done in list(self._filled.items()):
            job, seq = self._live[slot]
            end = len(seq.prompt) - 1
            if end < 0:
                self._finish(slot, job, Failed(OficinaError("the prompt is empty: nothing to continue")))
                continue
            stop = min(end, done + budget)
            if stop < end:
                stop = stop // chunk * chunk
                if stop <= done and not parts:    # a budget under one chunk: still a chunk a step
                    stop = min(end, (done // chunk + 1) * chunk)
            if stop > done:
                parts.append((slot, seq.prompt[:stop], done))
                budget -= stop - done
                self._filled[slot] = stop
            if stop == end:
                ready.append(slot)
            if budget <= 0:
                break
        try:
            self.runner.fill_many(parts)
        except Exception as e:      # a runner fault fails the prompts of that pass
            for slot, _, _ in parts:
                self._finish(slot, self._live[slot][0], Failed(e))
        ready = [slot for slot in ready if slot in self._live]
        for slot in ready:
            del self._filled[slot]
        return ready

    def _finish(self, slot: int, job: Job, item: Finished | Failed | None) -> None:
        self._live.pop(slot, None)
        self._filled.pop(slot, None)
        self._reused.pop(slot, None)
        try:
            self.runner.release(slot)
        finally:
            if item is not None:
                job.emit(item)
