"""``FastRunner``: the Runner over our own decoder (``model.Decoder``) and its static KV cache."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from ..runner import Capabilities, Runner, Scores, SlotsFull, target_logprobs
from .config import FAMILIES
from .model import Decoder
from .weights import PREFILL_ROWS, Form


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products run at full speed (oneDNN). Elsewhere torch
    emulates bf16 and float32 is faster."""
    if torch.cuda.is_available():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def memory() -> int:
    """The machine's physical memory in bytes (8 GiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def dense_prefill_budget() -> int:
    """At most 1 GiB and an eighth of the machine's memory."""
    return min(1 << 30, memory() // 8)


def weights_summary(dec: Decoder) -> str:
    counts: dict[str, int] = {}
    for p in dec.layers:
        for v in p.values():
            if isinstance(v, Form):
                counts[v.name] = counts.get(v.name, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" linears; output {dec.output.name}"


class FastRunner(Runner):
    def __init__(self, dec: Decoder, eos_ids: Sequence[int] = (), num_batch: int = 512, note: str | None = None):
        self.dec = dec
        self.vocab_size = dec.cfg.vocab_size
        self.context_length = dec.context
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.num_batch = max(1, int(num_batch))
        slots = dec.k[0].shape[0]
        self.capabilities = Capabilities(
            "fast", slots, str(dec.dtype).removeprefix("torch."),
            architectures=tuple(sorted(FAMILIES)), adapters=("lora (merged)", "ia3 (merged)"),
            weights=weights_summary(dec), note=note, chunk=PREFILL_ROWS - 1)
        self._ids: list[list[int]] = [[] for _ in range(slots)]
        self._live = [False] * slots

    # -- slots ----------------------------------------------------------------------------------
    def acquire(self, ids: Sequence[int] = ()) -> tuple[int, int]:
        free = [s for s in range(len(self._live)) if not self._live[s]]
        if not free:
            raise SlotsFull(f"all {len(self._live)} sequence slots are in use")
        ids = list(ids)
        want = ids[:-1]  # leave at least one id to prefill, so there are logits to return
        # the longest cached prefix in any slot, live or not (live slots' caches are read-only here)
        src, n = None, 0
        for s in range(len(self._live)):
            k = _common(self._ids[s], want)
            if k > n:
                src, n = s, k
        slot = src if src in free else max(free, key=lambda s: _common(self._ids[s], want))
        self._live[slot] = True
        if n and src != slot:
            self.dec.copy_prefix(src, slot, n)
            self._ids[slot] = self._ids[src][:n]
        else:
            n = _common(self._ids[slot], want)
            self._ids[slot] = self._ids[slot][:n]
        return slot, n

    def release(self, slot: int) -> None:
        self._live[slot] = False

    def length(self, slot: int) -> int:
        return len(self._ids[slot])

    # -- forward --------------------------------------------------------------------------------
    def prefill(self, slot: int, ids: Sequence[int], start: int = 0) -> Tensor:
        ids = [int(i) for i in ids]
        self._check(slot, ids, start)
        # The prompt but its last id fills the cache in chunks; the last id then goes through
        # the same one-row step as decoding. So a prompt whose prefix is reused (all but the
        # last id cached) gives the very same logits as the first time: the int kernels (one
        # row) and dequantize+GEMM (many rows) differ in the last bits, and sampling must not
        # depend on what happened to be cached.
        self._fill(slot, ids, start, len(ids) - 1)
        logits = self.dec.forward(torch.tensor([ids[-1:]]), torch.tensor([slot]), torch.tensor([len(ids) - 1]))[0]
        self._ids[slot].append(ids[-1])
        return logits

    def fill_many(self, parts: Sequence[tuple[int, Sequence[int], int]]) -> None:
        """Every part's ``ids[start:]`` in one ``Decoder.fill`` pass (the rows of all prompts
        go through each weight together; the forms pick their kernel by that total)."""
        todo = []
        for slot, ids, start in parts:
            ids = [int(i) for i in ids]
            self._check(slot, ids, start)
            todo.append((slot, start, ids[start:]))
        if todo:
            self.dec.fill(todo)
        for slot, _, new in todo:
            self._ids[slot].extend(new)

    def prepare_serving(self) -> int:
        """What a server wants that a one-shot ``run`` does not (returns the bytes it holds, the
        whole KV cache counted): the KV cache of every slot written once up front when it takes
        at most a quarter of the memory (as llama.cpp's server clears its cache), so a burst of
        new requests does not pay the first touch of its pages (on a VM each new page is a
        fault to the host: measured up to 0.4 ms, ~0.5 s for a fresh slot's first prompt);
        and a dequantized copy of the layer weights for ``fill_many`` when it fits
        ``dense_prefill_budget()`` (SmolLM2-135M: ~200 MB): the server's prefill then runs one
        GEMM path for any number of prompts (batch-invariant, no dequantize per pass)."""
        cache = sum(t.numel() * t.element_size() for t in self.dec.k + self.dec.v)
        if cache <= memory() // 4:   # a huge num_ctx x slots stays lazy: pages as sequences grow
            for t in self.dec.k + self.dec.v:
                t.zero_()
        return cache + self.dec.keep_dense(dense_prefill_budget())

    def _check(self, slot: int, ids: list[int], start: int) -> None:
        if self._ids[slot] != ids[:start] or start >= len(ids):
            raise ValueError(f"slot {slot} holds {len(self._ids[slot])} ids, not the prompt's first {start}")
        if len(ids) > self.context_length:
            raise ValueError(f"{len(ids)} tokens do not fit the {self.context_length}-token cache")

    def _fill(self, slot: int, ids: list[int], start: int, stop: int) -> None:
        """``ids[start:stop]`` into the cache, no logits. Under ``PREFILL_ROWS`` rows a chunk runs
        on the int kernels, from there on through dequantize + GEMM, whose cost is mostly the
        dequantizing (the crossovers per form are measured by bench/bench_kernels.py); so a short
        run goes in chunks of ``PREFILL_ROWS - 1`` and only a long one (>= 8 such chunks) in
        chunks of ``num_batch``."""
        rows = self.num_batch if stop - start >= 8 * PREFILL_ROWS else min(self.num_batch, PREFILL_ROWS - 1)
        i = start
        while i < stop:      # chunk edges at multiples of `rows`: the same wherever a reused prefix ended
            chunk = ids[i:min((i // rows + 1) * rows, stop)]
            self.dec.forward(torch.tensor([chunk]), torch.tensor([slot]), torch.tensor([i]), logits=False)
            self._ids[slot].extend(chunk)
            i += len(chunk)

    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> Tensor:
        start = [len(self._ids[s]) for s in slots]
        if max(start) >= self.context_length:
            raise ValueError("a sequence reached the end of its cache (num_ctx)")
        # in slot order: consecutive slots attend through a view of their caches, not a copy
        order = sorted(range(len(slots)), key=lambda i: slots[i])
        out = self.dec.forward(torch.tensor([[int(tokens[i])] for i in order]), torch.tensor([slots[i] for i in order]),
                               torch.tensor([start[i] for i in order]))
        if order != list(range(len(slots))):
            out = out[torch.tensor(order).argsort()]
        for s, t in zip(slots, tokens):
            self._ids[s].append(int(t))
        return out

    def score(self, ids: Sequence[int], start: int = 1) -> Scores:
        """``ids[:-1]`` through a free slot in chunks of ``num_batch``, reusing the cached prefix
        (at most ``ids[:start-1]``: the position before the first scored id is always run, so
        its logits exist); only chunks that hold scored positions compute logits, and each
        chunk's are reduced to the targets' log-probabilities at once ([T, V] never piles up)."""
        ids = [int(i) for i in ids]
        if not 1 <= start < len(ids):
            raise ValueError(f"nothing to score: start {start} for {len(ids)} ids")
        if len(ids) - 1 > self.context_length:
            raise ValueError(f"{len(ids) - 1} tokens do not fit the {self.context_length}-token cache")
        slot, n = self.acquire(ids[:start])
        try:
            lps, hits = [], []
            for i in range(n, len(ids) - 1, self.num_batch):
                chunk = ids[i:min(i + self.num_batch, len(ids) - 1)]
                want = i + len(chunk) > start - 1
                out = self.dec.forward(torch.tensor([chunk]), torch.tensor([slot]), torch.tensor([i]),
                                       last_only=False, logits=want)
                self._ids[slot].extend(chunk)
                if want:
                    first = max(start - 1 - i, 0)
                    lp, hit = target_logprobs(out[0, first:], ids[i + first + 1:i + len(chunk) + 1])
                    lps.append(lp)
                    hits.append(hit)
            return Scores(torch.cat(lps), torch.cat(hits))
        finally:
            self.release(slot)

    def logits(self, ids: Sequence[int]) -> Tensor:
        slot, n = self.acquire(ids)
        try:
            return self.prefill(slot, ids, n)
        finally:
            self.release(slot)

    def close(self) -> None:
        self.dec.k = self.dec.v = []


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
