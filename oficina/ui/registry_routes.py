"""The registry as the pages see it: models, a name's lineage across names (base -> LoRA ->
merged -> quantized through parent links), a model card, rollback; training runs from their run
folders and every version's evaluation metrics."""

from __future__ import annotations

import json
from pathlib import Path

from ..models.info import describe
from ..options import Options
from ..registry.names import parse_ref
from ..registry.registry import Registry
from ..registry.sources import resolve
from ..tuning import checkpoint
from .http import integer, text


def _registry():
    return Registry()  # one per call: a SQLite connection belongs to its thread


def _version(e, head: int | None = None) -> dict:
    return {"ref": e.ref, "name": e.name, "version": e.version, "digest": e.digest,
            "parent": e.parent, "created": e.created, "producer": e.producer,
            "metrics": e.metrics, "format": e.manifest.format, "details": e.manifest.details,
            "adapters": [a.path for a in e.manifest.adapters],
            "current": head == e.version if head is not None else None}


def models(_: dict) -> dict:
    reg = _registry()
    out = []
    for e in reg.list():
        versions, head = reg.history(e.name)
        out.append({**_version(e, head), "versions": len(versions),
                    "size": sum(f.size for f in e.manifest.files)})
    return {"models": out}


def lineage(data: dict) -> dict:
    """Every version connected to ``name`` through parent links, across names: nodes (oldest
    first) and parent -> child edges."""
    reg = _registry()
    target = parse_ref(text(data, "name")).name
    reg.history(target)  # 404 when unknown
    nodes: dict[str, dict] = {}
    for e in reg.list():
        versions, head = reg.history(e.name)
        nodes.update((v.ref, _version(v, head)) for v in versions)
    children: dict[str, list[str]] = {}
    for ref, n in nodes.items():
        if n["parent"]:
            children.setdefault(n["parent"], []).append(ref)
    seen, todo = set(), [r for r, n in nodes.items() if n["name"] == target]
    while todo:
        ref = todo.pop()
        if ref not in seen:
            seen.add(ref)
            parent = nodes.get(ref, {}).get("parent")
            todo += children.get(ref, []) + ([parent] if parent else [])
    keep = [nodes[r] if r in nodes else {"ref": r, "name": r.rpartition("@")[0], "missing": True}
            for r in sorted(seen, key=lambda r: nodes.get(r, {}).get("created", 0))]
    edges = [[n["parent"], n["ref"]] for n in keep if n.get("parent") in seen]
    return {"name": target, "nodes": keep, "edges": edges}


def card(data: dict) -> dict:
    """What ``oficina show --json`` prints for a version."""
    reg = _registry()
    entry = resolve(text(data, "name"), reg, auto_pull=False)
    d = describe(reg.snapshot(entry), entry.manifest.format).to_dict()
    d.update(name=entry.name, version=entry.version, digest=entry.digest,
             options=Options.from_mapping(entry.manifest.params).to_dict(),
             model_options=entry.manifest.params, system=entry.manifest.system,
             adapters=[a.path for a in entry.manifest.adapters])
    return d


def rollback(data: dict) -> dict:
    e = _registry().rollback(text(data, "name"), integer(data, "version", None))
    return {"status": "success", "current": e.ref}


def runs(_: dict) -> dict:
    """Runs under ``$OFICINA_HOME/runs`` with the loss history the training loop saves with each
    checkpoint (``checkpoints/step-*/state.json``), newest first."""
    root = _registry().home / "runs"
    out = []
    for d in sorted((p for p in root.iterdir() if p.is_dir()) if root.is_dir() else (), key=_mtime, reverse=True):
        state: dict = {}
        last = checkpoint.latest(d)
        if last is not None:
            try:
                state = json.loads((last / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
        out.append({"name": d.name, "modified": _mtime(d), "step": state.get("step"),
                    "total_steps": state.get("total_steps"), "epoch": state.get("epoch"),
                    "tokens": state.get("tokens"), "seconds": state.get("seconds"),
                    "history": state.get("history", []), "val_history": state.get("val_history", [])})
    return {"runs": out}


def _mtime(p: Path) -> float:
    try:
        return max([p.stat().st_mtime] + [c.stat().st_mtime for c in p.glob("checkpoints/*")])
    except OSError:
        return 0.0


def evaluations(_: dict) -> dict:
    """Every version with metrics (``oficina eval`` records them on the version), one row each:
    the side-by-side shape of ``oficina eval``'s table."""
    reg = _registry()
    return {"rows": [{"ref": v.ref, "metrics": v.metrics}
                     for e in reg.list() for v in reg.history(e.name)[0] if v.metrics]}
