"""Run tasks on one or more models and put the results side by side.

A ``Report`` records what is needed to reproduce it: each model's registry digest (or a digest
of its files), each task file's digest, the configuration and sampling options, the oficina
version. ``deltas`` compares every model with the first, item by item where the metric has item
scores (a paired standard error), so a real change can be told from noise.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import OficinaError
from ..formats.atomic import atomic_write
from ..formats.digest import sha256_file
from ..report import reporter
from . import stats
from .tasks import KINDS, EvalConfig, Metric, TaskResult, TaskSpec, unable


@dataclass
class ModelRecord:
    label: str               # as the user named it
    ref: str | None          # registry name@version
    digest: str              # registry manifest digest, or sha256 over the folder's files
    kind: str
    architecture: str
    parameters: int | None
    file_type: str | None


@dataclass
class Report:
    tasks: list[TaskSpec]
    config: EvalConfig
    models: list[ModelRecord] = field(default_factory=list)
    results: dict[str, dict[str, TaskResult]] = field(default_factory=dict)  # label -> task -> result
    created: float = field(default_factory=time.time)

    def headline(self) -> list[tuple[str, str]]:
        """(task name, metric) pairs shown by default, in task order."""
        return [(t.name, m) for t in self.tasks for m in KINDS[t.kind].headline]

    def columns(self, every: bool = False) -> list[tuple[str, str]]:
        if not every:
            return self.headline()
        cols: list[tuple[str, str]] = []
        for t in self.tasks:
            for r in self.results.values():
                for m in r[t.name].metrics if t.name in r else ():
                    if (t.name, m) not in cols:
                        cols.append((t.name, m))
        return cols

    def metric(self, label: str, task: str, name: str) -> Metric | None:
        r = self.results.get(label, {}).get(task)
        return r.metrics.get(name) if r else None

    def delta(self, label: str, task: str, name: str) -> tuple[float, float | None, bool] | None:
        """Change of ``label`` against the first model: (difference, paired stderr or None,
        significant at 95%)."""
        base = self.metric(self.models[0].label, task, name)
        cur = self.metric(label, task, name)
        if base is None or cur is None:
            return None
        diff = cur.value - base.value
        if base.per_item is not None and cur.per_item is not None and \
                len(base.per_item) == len(cur.per_item):
            _, se = stats.paired(base.per_item, cur.per_item)
            return diff, se, stats.significant(diff, se)
        return diff, None, False

    def metrics_for_registry(self, label: str) -> dict[str, float]:
        """Headline metrics as flat ``task.metric`` keys, for ``Registry.set_metrics``."""
        out = {}
        for task, name in self.headline():
            m = self.metric(label, task, name)
            if m is not None:
                out[f"{task}.{name}"] = round(m.value, 6)
        return out

    def to_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        return {
            "oficina": __version__,
            "created": self.created,
            "config": cfg,
            "tasks": [{"name": t.name, "kind": t.kind, "file": str(t.path), "digest": t.digest()}
                      for t in self.tasks],
            "models": [asdict(m) for m in self.models],
            "results": {label: {task: r.to_dict() for task, r in per.items()}
                        for label, per in self.results.items()},
            "deltas": {m.label: {f"{t}.{n}": _delta_dict(self.delta(m.label, t, n))
                                 for t, n in self.columns(every=True)}
                       for m in self.models[1:]},
        }

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            f.write(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _delta_dict(d) -> dict[str, Any] | None:
    if d is None:
        return None
    diff, se, sig = d
    return {"diff": diff, "stderr": se, "significant": sig}


def folder_digest(folder: Path) -> str:
    """sha256 over (relative path, file sha256) of every file: a stable id for a local model."""
    h = hashlib.sha256()
    root = Path(folder)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        h.update(f"{p.relative_to(root) if p != root else p.name}\0{sha256_file(p)}\n".encode())
    return "sha256:" + h.hexdigest()


def record(label: str, model) -> ModelRecord:
    info = model.info
    if model.entry is not None:
        ref, digest = model.entry.ref, model.entry.digest
    else:
        ref, digest = None, folder_digest(model.loaded.folder)
    return ModelRecord(label, ref, digest, info.kind, info.architecture, info.parameters,
                       info.file_type)


def load_items(spec: TaskSpec, cfg: EvalConfig) -> list[Any]:
    items = KINDS[spec.kind].load(spec.path)
    return items[:cfg.limit] if cfg.limit else items


def run_tasks(model, label: str, specs: Sequence[TaskSpec], cfg: EvalConfig,
              items: dict[str, list[Any]] | None = None) -> dict[str, TaskResult]:
    """Every task on one loaded model. Checks first that the model can run them all."""
    for spec in specs:
        need = KINDS[spec.kind].check(model)
        if need is not None:
            raise unable(model, label, KINDS[spec.kind], need)
    items = items or {s.name: load_items(s, cfg) for s in specs}
    return {s.name: KINDS[s.kind].run(model, items[s.name], cfg, label) for s in specs}


def evaluate(models: Sequence[str], specs: Sequence[TaskSpec], cfg: EvalConfig,
             registry=None, loader=None) -> Report:
    """Load each model in turn (one in memory at a time), run every task, collect a Report."""
    # here, not at the top: loads torch, and `oficina eval`'s flags come from this package
    from ..generation.session import load

    if not models:
        raise OficinaError("no model given")
    loader = loader or (lambda name: load(name, registry=registry))
    items = {s.name: load_items(s, cfg) for s in specs}  # bad task files fail before any model loads
    report = Report(list(specs), cfg)
    seen: dict[str, int] = {}
    for name in models:
        short = Path(name).expanduser().name if Path(name).expanduser().exists() else name
        label = short if short not in seen else f"{short} ({seen[short] + 1})"
        seen[short] = seen.get(short, 0) + 1
        model = loader(name)
        reporter().note(f"evaluating {label} ({model.info.architecture}, "
                        f"{model.info.parameters or 0:,} parameters)")
        report.models.append(record(label, model))
        report.results[label] = run_tasks(model, label, specs, cfg, items)
        del model
        gc.collect()
    return report


def save_metrics(report: Report, registry) -> list[str]:
    """Attach each registry model's headline metrics to its version (``oficina history``)."""
    done = []
    for m in report.models:
        if m.ref is None:
            continue
        entry = registry.get(m.ref)
        registry.set_metrics(entry, report.metrics_for_registry(m.label))
        done.append(m.ref)
    return done
