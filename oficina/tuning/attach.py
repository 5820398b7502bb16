"""Saved adapters back onto a base model: for ``oficina run TUNED``, a Modelfile ``ADAPTER``
line, ``oficina merge`` and ``load_tuned``.

An adapter folder is peft's layout (``adapter_config.json`` + ``adapter_model.safetensors``);
``method.method_of_adapter`` says which method wrote it. Several adapters apply in order.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from ..errors import FormatError, OficinaError
from ..models.compat import cache_arg
from ..report import reporter
from .method import adapter_meta, get, method_of_adapter


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

    from .tasks import TASKS

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
        if _virtual_tokens(model):
            raise OficinaError(f"adapter {i} ({method.name}) cannot go on top of a prompt/prefix-tuned "
                               f"model; tune the base model instead")
        model = method.load(model, folder, task)
        if method.merge and (merge or i < len(found) - 1):
            model = method.merge(model)  # a later peft adapter needs a plain model under it
    return model


def _virtual_tokens(model: nn.Module) -> bool:
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

    def forward(self, input_ids=None, cache=None, **kwargs):
        if cache is None:
            out = self.peft_model(input_ids=input_ids, **kwargs)
            n = self.peft_model.active_peft_config.num_virtual_tokens
            if out.logits.shape[1] == input_ids.shape[1] + n:  # prompt tuning returns them too
                out.logits = out.logits[:, n:]
            return out
        base = self.peft_model.get_base_model()
        return base(input_ids=input_ids, **{cache_arg(base): cache}, **kwargs)


def for_generation(model: nn.Module) -> nn.Module:
    return VirtualTokens(model).eval() if _virtual_tokens(model) else model.eval()


def attach_loaded(loaded, root: Path):
    """``models.loader.Loaded`` with the adapters under ``root`` applied, ready for the engine
    (what ``oficina.load`` does for a manifest with adapters)."""
    from ..models.loader import AUTO_CLASSES
    from .tasks import for_model, load_model

    found = folders(root)
    task, labels = task_of(found)
    task = task or for_model(loaded.info.kind)
    model = loaded.model
    if task.auto_class != AUTO_CLASSES[loaded.info.kind]:
        model = load_model(task, loaded.folder, labels, pad_id=loaded.tokenizer.pad_token_id)
    model = attach(model, root, task, merge=True)
    return replace(loaded, model=for_generation(model))
