"""Saved adapters back onto a base model: for ``oficina run TUNED``, a Modelfile ``ADAPTER``
line, ``oficina merge`` and ``load_tuned``.

An adapter folder is peft's layout (``adapter_config.json`` + ``adapter_model.safetensors``);
``method.method_of_adapter`` says which method wrote it. Several adapters apply in order.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..errors import FormatError, OficinaError
from ..models.compat import cache_arg
from ..models.loader import auto_class
from ..report import reporter
from .method import adapter_meta, get, method_of_adapter
from .tasks import TASKS, for_model, load_model


def folders(root: Path) -> list[Path]:
    """``root/0``, ``root/1``, ... (as the registry materialises ``manifest.adapters``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def task_of(folders_: list[Path]):
    """The task (and label set) the adapters were trained for, from our ``oficina.json`` or
    peft's ``task_type``; (None, ()) when nothing says."""
    import json


    for f in folders_:
        if (f / "adapter.gguf").exists():
            continue
        task = adapter_meta(f).get("task") or {}
        if task.get("name") in TASKS:
            return TASKS[task["name"]], tuple(task.get("labels") or ())
        try:
            peft_task = json.loads((f / "adapter_config.json").read_text()).get("task_type")
        except (OSError, ValueError, AttributeError):
            raise FormatError(f"{f}/adapter_config.json: cannot read adapter config") from None
        for t in TASKS.values():
            if t.peft_task_type == peft_task:
                return t, ()
    return None, ()


def attach(model: nn.Module, root: Path, task, merge: bool = True) -> nn.Module:
    """Apply every adapter under ``root`` to ``model``. With ``merge``, those that can be
    folded into the weights are (same function, no per-token adapter cost)."""
    found = folders(root)
    for i, folder in enumerate(found):
        if (folder / "adapter.gguf").exists():
            reporter().warn(f"adapter {i} is a GGUF LoRA; the torch engine cannot apply it, so it is ignored")
            continue
        method = get(method_of_adapter(folder))
        if virtual_tokens(model):
            raise OficinaError(f"adapter {i} ({method.name}) cannot go on top of a prompt/prefix-tuned "
                               f"model; tune the base model instead")
        model = method.load(model, folder, task)
        if method.merge and (merge or i < len(found) - 1):
            model = method.merge(model)  # a later peft adapter needs a plain model under it
    return model


def virtual_tokens(model: nn.Module) -> bool:
    cfg = getattr(model, "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


class VirtualTokens(nn.Module):
    """A prompt- or prefix-tuned peft model in our own decode loop (``generation/engine.py``).
    peft adds the virtual tokens on every forward call, which is right for the first call (the
    prompt) but not for the following one-token calls; those continue from the cache, which
    already holds them, with the base model."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft_model = peft_model

    @property
    def config(self):
        return self.peft_model.get_base_model().config

    @property
    def generation_config(self):
        return getattr(self.peft_model.get_base_model(), "generation_config", None)

    def get_output_embeddings(self):
        return self.peft_model.get_base_model().get_output_embeddings()

    def forward(self, input_ids=None, cache=None, **kwargs):
        # positions follow the cache, which holds the virtual tokens too (a runner counts only
        # the real ids)
        kwargs.pop("position_ids", None)
        if cache is None or cache.get_seq_length() == 0:  # the prompt: peft adds the tokens
            out = self.peft_model(input_ids=input_ids, **kwargs)
            n = self.peft_model.active_peft_config.num_virtual_tokens
            if out.logits.shape[1] == input_ids.shape[1] + n:  # prompt tuning returns them too
                out.logits = out.logits[:, n:]
            return out
        base = self.peft_model.get_base_model()
        return base(input_ids=input_ids, **{cache_arg(base): cache}, **kwargs)


def for_generation(model: nn.Module) -> nn.Module:
    return VirtualTokens(model).eval() if virtual_tokens(model) else model.eval()


def attach_loaded(loaded, root: Path):
    """``models.loader.Loaded`` with the adapters under ``root`` applied, ready for the engine
    (what ``oficina.load`` does for a manifest with adapters)."""
    found = folders(root)
    task, labels = task_of(found)
    task = task or for_model(loaded.info.kind)
    model = loaded.model
    if task.auto_class != auto_class(loaded.info.kind):
        model = load_model(task, loaded.folder, labels, pad_id=loaded.tokenizer.pad_token_id)
    model = attach(model, root, task, merge=True)
    return replace(loaded, model=for_generation(model))


# Llama-family projections -> (rows, columns) of their weight in ModelInfo's sizes, for bases
# whose tensor names are not the adapter's (a GGUF base: "blk.0.attn_q" for "layers.0.q_proj").
def _projection_shapes(info) -> dict[str, tuple[int | None, int | None]]:
    d, f, hd = info.embedding_length, info.feed_forward_length, info.head_dim
    q = info.heads * hd if info.heads and hd else None
    kv = info.kv_heads * hd if info.kv_heads and hd else None
    return {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q),
            "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}


_LORA_KEY = re.compile(r"(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight")
_LAYER = re.compile(r"(?:^|\.)(?:layers?|h|block|blk)\.(\d+)\.")


def check_adapter(folder: Path, info, label: str) -> None:
    """Refuse, when a Modelfile ADAPTER line is created, an adapter that would crash at run time:
    weights that are not valid safetensors, or LoRA matrices that do not fit the base model
    (lora_B @ lora_A must have the shape of the weight it is added to, in a layer that exists)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for w in sorted(Path(folder).glob("adapter_model*.safetensors")):
        try:
            with safe_open(str(w), framework="pt") as f:
                for k in f.keys():
                    shapes[k] = tuple(f.get_slice(k).get_shape())
        except Exception as e:  # safetensors raises its own error types for bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FormatError(f"{label}: {w.name} is not a valid safetensors file ({first})") from None
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for k, shape in shapes.items():
        if m := _LORA_KEY.fullmatch(k):
            pairs.setdefault(m.group(1), {})[m.group(2)] = shape
    base = {name: shape for name, shape, _ in info.tensors}
    table = _projection_shapes(info)
    for module, ab in sorted(pairs.items()):
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise FormatError(f"{label}: the LoRA for {module} has lora_A {a} and lora_B {b}, "
                              f"which are not an (r, in) and (out, r) pair")
        layer = _LAYER.search(module + ".")
        if layer and info.layers and int(layer.group(1)) >= info.layers:
            raise FormatError(f"{label}: the LoRA adapts {module}, but the base model has "
                              f"{info.layers} layers")
        want = base.get(module + ".weight")
        want = tuple(want) if want is not None and len(want) == 2 else table.get(module.rsplit(".", 1)[-1])
        got = (b[0], a[1])
        if want and None not in want and got != want and got != want[::-1]:  # GPT-2's Conv1D is (in, out)
            raise FormatError(f"{label}: the LoRA for {module} is {got[0]}x{got[1]}, but that weight of "
                              f"the base model is {want[0]}x{want[1]}; it was trained for another model")
