"""One text -> one vector: pooling of an encoder's last hidden states, as sentence-transformers
does it, so a sentence-transformers model gives the vectors it was trained to give.

The mode comes from the model's own ``1_Pooling/config.json``, normalisation from a
``sentence_transformers.models.Normalize`` entry in ``modules.json`` and the window from
``sentence_bert_config.json`` (sentence-transformers ``models/Pooling.py``, ``Normalize.py``,
``Transformer.py``). Used by ``inspect.embed`` (one text) and ``rag.embed`` (batches).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def _mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # sentence-transformers divides by the mask sum clamped at 1e-9, in the hidden states' dtype
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _cls(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return h[:, 0]


def _last(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # right padding: the last real token of row i is at mask[i].sum() - 1
    idx = mask.long().sum(1) - 1
    return h[torch.arange(h.shape[0], device=h.device), idx.clamp(min=0)]


def _max(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return h.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(h.dtype).min).max(1).values


# pooling name -> ([B, n, d] hidden states, [B, n] attention mask) -> [B, d]
POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": _mean, "cls": _cls, "last": _last, "max": _max,
}
# sentence-transformers 1_Pooling/config.json keys -> our names
_ST_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
             "pooling_mode_lasttoken": "last", "pooling_mode_max_tokens": "max"}


@dataclass(frozen=True)
class PoolingSpec:
    pooling: str = "mean"
    normalize: bool = False
    max_tokens: int | None = None  # the window sentence-transformers truncates to (MiniLM: 256)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def spec_for(folder: str | Path | None) -> PoolingSpec:
    """What the model folder says about pooling; mean, unnormalised, no window otherwise."""
    if folder is None:
        return PoolingSpec()
    folder = Path(folder)
    pooling = "mean"
    modes = _read_json(folder / "1_Pooling" / "config.json")
    if isinstance(modes, dict):
        pooling = next((name for key, name in _ST_MODES.items() if modes.get(key)), "mean")
    modules = _read_json(folder / "modules.json")
    normalize = isinstance(modules, list) and any(
        isinstance(m, dict) and str(m.get("type", "")).endswith(".Normalize") for m in modules)
    st = _read_json(folder / "sentence_bert_config.json")
    window = st.get("max_seq_length") if isinstance(st, dict) else None
    return PoolingSpec(pooling, normalize, int(window) if isinstance(window, int) else None)


def pool(name: str, hidden: torch.Tensor, mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    out = POOLINGS[name](hidden, mask)
    return torch.nn.functional.normalize(out, p=2, dim=-1) if normalize else out
