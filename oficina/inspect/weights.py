"""The weights: every parameter tensor (module path, shape, dtype in memory, type in the file,
number of values, component), totals per component, and a histogram of one tensor's values.

A GGUF model runs on dequantized float32 copies of its weights, so the histogram shows the
values the model computes with; the type each tensor is *stored* as (Q4_1, Q8_0, F32, ...) comes
from the file's header (``ModelInfo.tensors``), matched to the module path through gguf-py's
tensor name table (``gguf.get_tensor_name_map``, the table llama.cpp's converter writes with).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch

from ..errors import OficinaError
from ..models.info import component
from .common import name_of, pick

# The block index in a module path: Llama/Gemma "layers.N", BERT "layer.N", GPT-2 "h.N",
# T5 "block.N" (T5's own "layer.M" inside a block comes later and is not the block).
_LAYER = re.compile(r"\.(?:layers|layer|h|block|blocks)\.(\d+)\.")


@dataclass
class Param:
    name: str  # module path, e.g. "model.layers.0.self_attn.q_proj.weight"
    shape: tuple[int, ...]
    dtype: str  # in memory, e.g. "float32"
    stored: str | None  # in the file, e.g. "Q4_1", "F32", "BF16"; None when not found
    count: int
    component: str  # "embeddings" | "attention" | "feed_forward" | "norms" | "head" | "other"
    layer: int | None


@dataclass
class Histogram:
    name: str
    shape: tuple[int, ...]
    stored: str | None
    dequantized: bool  # the values are a float copy of a quantized tensor
    counts: list[int]
    edges: list[float]  # len(counts) + 1
    mean: float
    std: float
    min: float
    max: float


@dataclass
class Weights:
    model: str
    params: list[Param]  # those of ``layer``, or all
    layer: int | None
    layers: int
    parameters: int  # the whole model's, shared tensors counted once
    tied: dict[str, str] = field(default_factory=dict)  # name -> the parameter it shares
    histogram: Histogram | None = None

    @property
    def total(self) -> int:
        return sum(p.count for p in self.params)

    @property
    def totals(self) -> dict[str, int]:
        c: Counter = Counter()
        for p in self.params:
            c[p.component] += p.count
        return dict(c.most_common())

    def tree(self) -> list[dict]:
        """Parameters with the layer number folded into "*": one row per kind of tensor, with
        how many layers have it (``times``); a single layer's view keeps its numbers."""
        rows: dict[str, dict] = {}
        for p in self.params:
            key = p.name if self.layer is not None or p.layer is None else \
                _LAYER.sub(lambda m: m.group(0).replace(m.group(1), "*"), "." + p.name, 1)[1:]
            r = rows.setdefault(key, {"name": key, "shapes": [], "dtype": p.dtype, "stored": Counter(),
                                      "count": 0, "times": 0, "component": p.component})
            r["shapes"].append(p.shape)
            r["stored"][p.stored or "?"] += 1
            r["count"] += p.count
            r["times"] += 1
        for r in rows.values():
            shapes = set(r.pop("shapes"))
            r["shape"] = next(iter(shapes)) if len(shapes) == 1 else None
            r["stored"] = dict(r["stored"].most_common())
        return list(rows.values())

    def to_dict(self) -> dict:
        return {"model": self.model, "layer": self.layer, "layers": self.layers,
                "parameters": self.parameters, "total": self.total, "totals": self.totals,
                "tied": self.tied, "params": [asdict(p) for p in self.params],
                "histogram": asdict(self.histogram) if self.histogram else None}


def weights(model, layer: int | None = None, tensor: str | None = None, bins: int = 100) -> Weights:
    """The parameter table of ``model`` (of one ``layer`` when given) and a histogram of
    ``tensor`` (a module path or a unique part of one; default: the layer's first weight
    matrix, or the token embedding table)."""
    tm = model.torch_model
    stored = _stored_types(model)
    params, seen = [], {}
    tied = {}
    for name, p in tm.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied[name] = seen[id(p)]
            continue
        seen[id(p)] = name
        m = _LAYER.search("." + name)
        params.append(Param(name, tuple(p.shape), str(p.dtype).removeprefix("torch."),
                            stored(name), p.numel(), component(name),
                            int(m.group(1)) if m else None))
    layers = 1 + max((p.layer for p in params if p.layer is not None), default=-1)
    total = sum(p.count for p in params)
    if layer is not None:
        layer = pick(layer, layers, "layer", name_of(model))
        params = [p for p in params if p.layer == layer]
    chosen = _choose(model, params, tensor, layer)
    w = Weights(name_of(model), params, layer, layers, total, tied)
    w.histogram = histogram(chosen, dict(tm.named_parameters())[chosen.name], model, bins)
    return w


def histogram(p: Param, values: torch.Tensor, model, bins: int = 100) -> Histogram:
    x = values.detach().float().flatten().cpu()
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(x, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    quantized = model.info.format == "gguf" and (p.stored or "F32") not in ("F32", "F16", "BF16")
    return Histogram(p.name, p.shape, p.stored, quantized, [int(c) for c in counts.tolist()],
                     edges.tolist(), float(x.mean()), float(x.std()) if x.numel() > 1 else 0.0,
                     float(x.min()), float(x.max()))


def _choose(model, params: list[Param], tensor: str | None, layer: int | None) -> Param:
    if tensor:
        exact = [p for p in params if p.name == tensor]
        found = exact or [p for p in params if tensor in p.name]
        if len(found) == 1:
            return found[0]
        where = f"layer {layer}" if layer is not None else name_of(model)
        if not found:
            raise OficinaError(f"no tensor named like {tensor!r} in {where}; e.g. "
                               f"{', '.join(p.name for p in params[:3])}")
        raise OficinaError(f"{tensor!r} matches {len(found)} tensors in {where} "
                           f"({', '.join(p.name for p in found[:4])}, ...); give more of the name")
    if layer is not None:
        return next((p for p in params if len(p.shape) == 2), params[0])
    table = model.torch_model.get_input_embeddings().weight
    name = next(n for n, q in model.torch_model.named_parameters() if q is table)
    return next(p for p in params if p.name == name)


def _stored_types(model):
    """A function: module path -> the tensor's type in the model's file (None if unknown)."""
    info = model.info
    by_name = {n: t for n, _, t in info.tensors}
    if info.format == "gguf":
        import gguf

        arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(info.architecture)
        if arch is None:
            return lambda name: None
        table = gguf.get_tensor_name_map(arch, info.layers or 0)
        return lambda name: by_name.get(table.get_name(name, try_suffixes=(".weight", ".bias")) or "")

    def hf(name: str) -> str | None:
        # A checkpoint may carry a prefix the loaded class does not ("bert.", "model.") or lack one.
        if name in by_name:
            return by_name[name]
        hits = [t for n, t in by_name.items() if n.endswith("." + name) or name.endswith("." + n)]
        return hits[0] if len(hits) == 1 else None

    return hf
