"""The honest comparison: the same recipe and data trained once per method, one table.

Each method runs in a fresh process (``spawn``), so peak memory is that method's alone (a
process's allocator keeps memory it freed, and ``ru_maxrss`` never goes down) and no method
inherits another's warm caches.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from dataclasses import dataclass

from ..errors import OficinaError
from ..registry.registry import Registry
from ..report import reporter
from .config import TuneConfig
from .method import get


@dataclass
class Row:
    method: str
    trainable: int
    trainable_percent: float
    peak_memory: int
    tokens_per_s: float
    wall_seconds: float
    train_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    artifact_bytes: int
    perplexity_before: float | None
    perplexity_after: float | None
    ref: str | None = None
    error: str | None = None


def _row(cfg: TuneConfig, home: str | None, resume: bool = False) -> Row:
    # here, not at the top: loads torch, and the CLI reads this module's flags
    from .run import tune

    r = tune(cfg, Registry(home) if home else None, resume=resume)
    m = r.metrics
    return Row(r.method, r.trainable, m["trainable_percent"], m["peak_memory"], m["tokens_per_s"],
               m["wall_seconds"], m["train_loss"], m.get("val_loss"), m.get("val_accuracy"),
               m["artifact_bytes"], r.perplexity_before, r.perplexity_after,
               r.entry.ref if r.entry else None)


def _child(cfg: TuneConfig, home: str | None, queue) -> None:
    try:
        queue.put(("ok", dataclasses.asdict(_row(cfg, home))))
    except Exception as e:  # reported in the table's row, not as a crash of the comparison
        queue.put(("error", f"{type(e).__name__}: {e}"))


def compare(cfg: TuneConfig, methods: list[str], registry: Registry | None = None,
            isolate: bool = True) -> list[Row]:
    """Train ``cfg`` once per method. With ``cfg.out``, each result is registered as
    ``<out>-<method>``. Per-method settings come from ``cfg.options`` only for ``cfg.method``;
    the others use their defaults (and their default learning rate unless the recipe sets one)."""
    for m in methods:
        get(m)  # unknown names fail before anything trains
    if not methods:
        raise OficinaError("--compare needs at least one method")
    home = str(registry.home) if registry else None
    rows = []
    for m in methods:
        run_cfg = dataclasses.replace(
            cfg, method=m, options=cfg.options if m == cfg.method else {},
            out=f"{cfg.out}-{m}" if cfg.out else None,
            run_dir=f"{cfg.run_dir}/{m}" if cfg.run_dir else None)
        reporter().note(f"— {m} —")
        if not isolate:
            rows.append(_row(run_cfg, home))
            continue
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(run_cfg, home, queue))
        proc.start()
        status, payload = queue.get()
        proc.join()
        if status == "ok":
            rows.append(Row(**payload))
        else:
            reporter().warn(f"{m} failed: {payload}")
            rows.append(Row(m, 0, 0.0, 0, 0.0, 0.0, None, None, None, 0, None, None, error=payload))
    return rows

