"""bf16 storage for the frozen linear weights of a bf16 run.

Under bf16 autocast every ``nn.Linear`` casts its fp32 weight to bf16 on every forward, and the
cast of a frozen weight is the same tensor every step. Storing the frozen linear weights in bf16
for the run gives the same numbers (the same rounding, done once), no per-step casts and half
the memory of those weights. Embeddings and weights tied to them are left alone (an embedding is
not autocast, so its output would change). Afterwards the exact fp32 values are read back from
the base's own safetensors files, so nothing after training (the forgetting check, merging) sees
rounded weights. Used only where every lowered weight can be found in those files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Lowered:
    def __init__(self, params: dict[str, nn.Parameter], files: dict[str, Path]):
        self.params, self.files = params, files

    def restore(self) -> None:
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in self.params:
            by_file.setdefault(self.files[name], []).append(name)
        with torch.no_grad():
            for file, names in by_file.items():
                with safe_open(str(file), "pt", device="cpu") as f:
                    for name in names:
                        p = self.params[name]
                        p.data = f.get_tensor(name).to(torch.float32).to(p.device)
        self.params = {}

    def __len__(self) -> int:
        return len(self.params)


def base_names(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` of a model as loaded (its checkpoint names), taken before a
    method wraps it (peft keeps the base layers' parameter objects, under longer names)."""
    return {id(p): n for n, p in model.named_parameters()}


def lower(model: nn.Module, folder: Path, names: dict[int, str]) -> Lowered | None:
    """Store the frozen fp32 ``nn.Linear`` weights of ``model`` in bf16; None when there are none
    or one of them cannot be found in ``folder``'s safetensors files."""
    from safetensors import safe_open

    embedded = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    chosen: dict[str, nn.Parameter] = {}
    for m in model.modules():
        if type(m) is not nn.Linear:
            continue
        w = m.weight
        if w.requires_grad or w.dtype != torch.float32 or w.data_ptr() in embedded or id(w) not in names:
            continue
        chosen[names[id(w)]] = w
    files: dict[str, Path] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), "pt", device="cpu") as f:
            files.update({k: file for k in f.keys()})
    if not chosen or any(n not in files for n in chosen):
        return None
    with torch.no_grad():
        for w in chosen.values():
            w.data = w.data.to(torch.bfloat16)
    return Lowered(chosen, files)
