"""Checkpoints of a training run, written so that a crash never leaves a half-written one.

``<run>/checkpoints/step-00000042/`` holds ``state.safetensors`` (the trained parameters, the
optimizer's moments, the RNG states) and ``state.json`` (step, epoch, position in the epoch,
loss history, the recipe's fingerprint). Both are written into a temp folder that is fsynced
and renamed into place (rename(2) is atomic), so a folder named ``step-*`` is always complete;
resuming takes the newest. No pickle: the optimizer state is flattened into named tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import OficinaError

PREFIX = "step-"


def save(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
         keep: int = 2) -> Path:
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                  str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=str))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file())


def latest(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path / "state.safetensors")), json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise OficinaError(f"checkpoint {path} cannot be read ({e})") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- optimizer state <-> named tensors ------------------------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``opt.state_dict()`` as flat tensors ``optim/<param index>/<key>`` plus the JSON-able
    param groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim/{idx}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, sd["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})
