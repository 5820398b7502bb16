"""The one training loop. It trains whatever parameters of ``model`` require grad and knows
nothing of methods or tasks: the caller passes a loss function and an evaluation function.

Per optimizer step: ``grad_accum`` micro-batches under optional bf16 autocast (weights and
AdamW moments stay fp32), gradient clipping, AdamW, a learning rate computed from the step
(warmup then constant/linear/cosine, so no scheduler state to save). Validation and atomic
checkpoints every N steps or once per epoch. A non-finite loss or gradient stops the run before
the optimizer touches the weights, keeping the last good checkpoint; Ctrl-C finishes the step,
writes a checkpoint and stops; ``resume`` continues from the newest checkpoint and, because the
batch order is a function of (seed, epoch) and the RNG state is restored, ends with the same
weights as an uninterrupted run. Under ``torchrun`` the model is wrapped in DDP and every rank
takes its share of the batches (``batches.py``); rank 0 writes checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import OficinaError
from ..report import reporter
from . import checkpoint
from .batches import Batches
from .config import TuneConfig
from .plot import loss_curve


class Diverged(OficinaError):
    """The loss or the gradients became NaN or infinite."""


class Interrupted(OficinaError):
    """Ctrl-C: the run stopped at a step boundary and left a checkpoint to resume from."""


@dataclass
class Result:
    steps: int
    total_steps: int
    epochs: float
    tokens: int
    seconds: float  # time spent in training steps (not validation or checkpoints)
    wall_seconds: float
    train_loss: float | None
    val: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    val_history: list[dict] = field(default_factory=list)
    peak_memory: int = 0
    resumed_from: int | None = None
    checkpoint: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def schedule(cfg: TuneConfig, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    base = cfg.lr
    if step < cfg.warmup_steps:
        return base * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return base
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.schedule == "linear":
        return base * (1 - progress)
    return base * 0.5 * (1 + math.cos(math.pi * progress))  # cosine (Loshchilov & Hutter 2017)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _optimizer(params: list[nn.Parameter], cfg: TuneConfig) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:  # the fused kernel (CPU and CUDA since torch 2.4) is the fastest when present
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kwargs)


def train(model: nn.Module, batches: Batches, cfg: TuneConfig, run_dir: Path,
          loss_fn: Callable[[nn.Module, dict], torch.Tensor],
          evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          resume: bool = False, fingerprint: str = "", label: str | None = None) -> Result:
    """Train ``model``; ``label`` names the run in the progress bar and the loss curve
    (default: the recipe's method)."""
    run = _Run(model, batches, cfg, Path(run_dir), loss_fn, evaluate, fingerprint, label or cfg.method)
    if resume:
        run.resume()
    st, total = run.st, run.total  # after resume, which replaces the state
    if st["step"] == 0 and run.rank == 0:
        for old in checkpoint.checkpoints(run_dir):  # a fresh run: stale checkpoints would mislead --resume
            shutil.rmtree(old, ignore_errors=True)
    stop = _StopRequest(enabled=run.world == 1)
    peak = _PeakMemory(run.device)
    model.train()
    wall0 = time.perf_counter()
    val: dict[str, float] = {}
    with stop, peak, reporter().progress(f"{run.label}: training", total) as bar:
        bar.advance(st["step"])
        while st["step"] < total:
            micro_batches = batches.epoch(st["epoch"], st["micro"])
            while st["step"] < total:
                group = list(islice(micro_batches, run.accum))
                if not group:
                    break
                loss_sum, rate = run.step(group)
                bar.update(description=f"{run.label}: loss {loss_sum:.3f} · {rate:,.0f} tok/s")
                bar.advance(1)
                epoch_done = st["micro"] >= len(batches)
                if epoch_done:
                    st["epoch"] += 1
                    st["micro"] = 0
                done = st["step"] >= total
                if _due(cfg.eval_every, st["step"], epoch_done) or done:
                    val = run.run_eval()
                if st["step"] % run.log_every == 0 or done:
                    extra = "".join(f" · val {k} {v:.4g}" for k, v in val.items()) if val else ""
                    reporter().note(f"step {st['step']}/{total} · epoch {st['epoch']} · loss "
                                    f"{loss_sum:.4f}{extra} · {rate:,.0f} tok/s")
                    val = {}
                if _due(cfg.save_every, st["step"], epoch_done) or done or stop.requested:
                    run.last_ckpt = run.save_checkpoint() or run.last_ckpt
                if stop.requested:
                    raise Interrupted(f"interrupted at step {st['step']} of {total}; checkpoint "
                                      f"written to {run_dir}; run the same command with --resume "
                                      f"to continue")
                if epoch_done:
                    break
    return run.result(time.perf_counter() - wall0, peak.peak)


class _Run:
    """One call of ``train``: the optimizer, the state a checkpoint holds (``st``) and the
    pieces of the loop (an optimizer step, an evaluation, a checkpoint)."""

    def __init__(self, model: nn.Module, batches: Batches, cfg: TuneConfig, run_dir: Path, loss_fn,
                 evaluate, fingerprint: str, label: str):
        self.rank, self.world = _dist()
        if len(batches) == 0:
            raise OficinaError("no training batches: the training data is empty")
        self.model, self.cfg, self.run_dir, self.loss_fn, self.evaluate = model, cfg, run_dir, loss_fn, evaluate
        self.fingerprint, self.label = fingerprint, label
        self.device = next(model.parameters()).device
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named:
            raise OficinaError("nothing to train: the method left no parameter requiring grad")
        self.opt = _optimizer([p for _, p in self.named], cfg)
        self.net = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.accum = cfg.grad_accum
        self.per_epoch = max(1, -(-len(batches) // self.accum))
        self.total = cfg.max_steps or (cfg.epochs or 1) * self.per_epoch  # tune resolves epochs=None first
        self.log_every = cfg.log_every or max(1, self.total // 10)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        self.st: dict[str, Any] = {"step": 0, "epoch": 0, "micro": 0, "tokens": 0, "seconds": 0.0,
                                   "history": [], "val_history": [], "fingerprint": fingerprint}
        self.resumed_from: int | None = None
        self.last_ckpt: Path | None = None

    def resume(self) -> None:
        ck = checkpoint.latest(self.run_dir)
        if ck is None:
            reporter().note(f"no checkpoint in {self.run_dir}; starting from the beginning")
            return
        self.st = _restore(ck, self.named, self.opt, self.fingerprint)
        self.resumed_from, self.last_ckpt = self.st["step"], ck
        reporter().note(f"resuming from {ck.name} (step {self.st['step']} of {self.total})")

    def step(self, group: list) -> tuple[float, float]:
        """One optimizer step over the micro-batches ``group``; (mean loss, tokens per second)."""
        st, cfg, world, device = self.st, self.cfg, self.world, self.device
        t0 = time.perf_counter()
        lr = schedule(cfg, st["step"], self.total)
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss_sum, bad = 0.0, None
        for i, b in enumerate(group):
            inputs = {k: v.to(device) for k, v in b.inputs.items()}
            sync = contextlib.nullcontext() if (world == 1 or i == len(group) - 1) else self.net.no_sync()
            with sync:
                with self.autocast:
                    loss = self.loss_fn(self.net, inputs)
                value = float(loss.detach())
                if not math.isfinite(value):
                    bad = value
                    if world == 1:
                        break
                (loss / len(group)).backward()
            loss_sum += value / len(group)
        if world > 1:  # every rank must stop together, or the others wait forever
            flag = torch.tensor([0.0 if bad is None else 1.0], device=device)
            torch.distributed.all_reduce(flag)
            bad = float("nan") if flag.item() and bad is None else bad
        if bad is not None:
            raise _diverged(st, bad, "loss", cfg, self.run_dir, self.last_ckpt)
        if cfg.max_grad_norm:
            norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in self.named], cfg.max_grad_norm))
            if not math.isfinite(norm):
                raise _diverged(st, norm, "gradient norm", cfg, self.run_dir, self.last_ckpt)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if world > 1:
            t = torch.tensor([loss_sum], device=device)
            torch.distributed.all_reduce(t)
            loss_sum = float(t) / world
        st["step"] += 1
        st["micro"] += len(group)
        st["tokens"] += sum(b.tokens for b in group) * world
        st["seconds"] += time.perf_counter() - t0
        st["history"].append({"step": st["step"], "epoch": st["epoch"], "loss": loss_sum,
                              "lr": lr, "tokens": st["tokens"], "seconds": st["seconds"]})
        return loss_sum, st["tokens"] / st["seconds"] if st["seconds"] else 0.0

    def save_checkpoint(self) -> Path | None:
        st, path = self.st, None
        if self.rank == 0:
            tensors = {f"param/{n}": p for n, p in self.named}
            opt_tensors, groups = checkpoint.optimizer_tensors(self.opt)
            tensors.update(opt_tensors)
            tensors["rng/cpu"] = torch.get_rng_state()
            if torch.cuda.is_available():
                tensors["rng/cuda"] = torch.cuda.get_rng_state()
            meta = {**st, "param_groups": groups, "total_steps": self.total}
            path = checkpoint.save(self.run_dir, st["step"], tensors, meta, keep=self.cfg.keep_checkpoints)
            loss_curve(st["history"], st["val_history"], self.run_dir / "loss.png",
                       title=f"{self.label} on {Path(self.cfg.base).name or self.cfg.base}")
        if self.world > 1:
            torch.distributed.barrier()
        return path

    def run_eval(self) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self.autocast:
            metrics = self.evaluate(self.model)
        self.model.train()
        self.st["val_history"].append({"step": self.st["step"], **metrics})
        return metrics

    def result(self, wall_seconds: float, peak_memory) -> Result:
        st = self.st
        final_val = st["val_history"][-1] if st["val_history"] else {}
        tail = [h["loss"] for h in st["history"][-max(1, self.per_epoch):]]
        return Result(steps=st["step"], total_steps=self.total, epochs=st["step"] / self.per_epoch,
                      tokens=st["tokens"], seconds=st["seconds"], wall_seconds=wall_seconds,
                      train_loss=sum(tail) / len(tail) if tail else None,
                      val={k: v for k, v in final_val.items() if k != "step"},
                      history=st["history"], val_history=st["val_history"],
                      peak_memory=peak_memory, resumed_from=self.resumed_from,
                      checkpoint=str(self.last_ckpt) if self.last_ckpt else None)


def _due(every: int, step: int, epoch_done: bool) -> bool:
    """Every ``every`` steps, or at the end of each epoch when ``every`` is 0."""
    return step % every == 0 if every else epoch_done


def _restore(ck: Path, named, opt, fingerprint: str) -> dict[str, Any]:
    tensors, meta = checkpoint.load(ck)
    if fingerprint and meta.get("fingerprint") and meta["fingerprint"] != fingerprint:
        raise OficinaError(f"{ck} was written by a run with a different recipe or data; resume "
                           f"needs the same settings (or start a new run without --resume)")
    with torch.no_grad():
        for n, p in named:
            key = f"param/{n}"
            if key not in tensors:
                raise OficinaError(f"{ck} has no parameter {n}; it belongs to another method or model")
            p.copy_(tensors[key])
    checkpoint.load_optimizer(opt, tensors, meta.pop("param_groups"))
    torch.set_rng_state(tensors["rng/cpu"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    meta.pop("total_steps", None)
    return meta


def _diverged(st: dict, value: float, what: str, cfg: TuneConfig, run_dir: Path, last: Path | None) -> Diverged:
    kept = (f"the last good checkpoint is {last.name} in {run_dir}" if last
            else "no checkpoint had been written yet")
    return Diverged(f"training diverged at step {st['step'] + 1} (epoch {st['epoch']}): {what} is "
                    f"{value}; stopped before updating the weights; {kept}; try a lower "
                    f"learning_rate (now {cfg.lr:g})" + (" or precision fp32" if cfg.precision != "fp32" else ""))


class _StopRequest:
    """Ctrl-C sets a flag the loop reads at the next step boundary; a second Ctrl-C stops at once."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        reporter().warn("stopping after this step (Ctrl-C again to stop now, without a checkpoint)")

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False


class _PeakMemory:
    """Peak memory while training: CUDA's allocator peak, or on CPU the process's resident set
    sampled every 10 ms (``ru_maxrss`` cannot be reset, so it would include earlier work)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            if self._stop.wait(0.01):
                return

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
        return False
