"""One training session: what every trainer (``tune``, DPO, reward, distillation, pretraining)
does around the shared loop, written once so a fix here reaches all of them: the run folder,
the fingerprint resuming checks, the data read and split, the base opened (earlier adapters
folded in, virtual-token adapters refused), the model prepared (seed, gradient checkpointing,
the method, the CPU/bf16 fast paths), the loop run and undone, the metrics every run reports,
and the result saved and published as a registry version with its lineage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import __version__
from ..errors import OficinaError
from ..formats.template import is_go_template
from ..models.info import describe
from ..models.loader import auto_class, load_folder, load_tokenizer, no_tqdm
from ..models.quant_linear import QuantLinear
from ..registry.manifest import Manifest
from ..registry.registry import Entry, Registry
from ..registry.sources import collect_files, resolve
from . import attach, attention, data, dropout, frozen, loop, tasks
from .config import TuneConfig, digest
from .method import META, Method, adapter_meta


@dataclass
class Base:
    """The model a run starts from, opened once."""

    ref: str
    entry: Entry | None           # None for a folder or file outside the registry
    manifest: Manifest | None
    source: Path                  # snapshot folder, HF folder or .gguf file
    folder: Path                  # a Hugging Face folder (GGUF converted once into the cache)
    info: Any                     # ModelInfo
    tokenizer: Any
    model: nn.Module | None = None  # already loaded by the GGUF path, in the loader's class

    @property
    def id(self) -> str:
        """What the fingerprint and the lineage name it by: its digest, or its resolved path."""
        return self.entry.digest if self.entry else str(Path(self.source).resolve())

    @property
    def lineage_ref(self) -> str:
        return self.entry.ref if self.entry else str(self.source)


def fingerprint(*parts: Any) -> str:
    """What determines the trained weights; ``--resume`` refuses a checkpoint with another."""
    return digest(list(parts))


def loop_metrics(lp: loop.Result) -> dict[str, Any]:
    """The metrics every run records from the shared loop."""
    return {"train_loss": lp.train_loss, "steps": lp.steps, "epochs": round(lp.epochs, 3),
            "tokens": lp.tokens, "tokens_per_s": round(lp.tokens_per_s, 1),
            "train_seconds": round(lp.seconds, 2), "wall_seconds": round(lp.wall_seconds, 2),
            "peak_memory": lp.peak_memory}


def data_lineage(ds) -> dict:
    return {"path": str(ds.path), "digest": ds.digest, "records": len(ds), "shape": ds.shape}


def eval_lineage(cfg: TuneConfig, eval_ds) -> dict | None:
    """The held-out data in the lineage: its own file, or the share of the training file."""
    if cfg.eval:
        return data_lineage(eval_ds)
    return {"held_out_of_train": cfg.val_split, "records": len(eval_ds)} if eval_ds is not None else None


class Session:
    """One run: its registry, its process (rank of world under ``torchrun``) and its folder;
    then, once ``prepare``d, the model being trained, its base and method."""

    def __init__(self, registry: Registry | None, run_dir: str | Path | None, name: str):
        self.reg = registry or Registry()
        self.rank, self.world = init_distributed()
        self.run_dir = Path(run_dir).expanduser() if run_dir else self.reg.home / "runs" / slug(name)
        self.base: Base | None = None
        self.model: nn.Module | None = None
        self.method: Method | None = None
        self.trainable = 0
        self.parameters = 0
        self._undo: list[Callable[[], None]] = []

    @classmethod
    def for_recipe(cls, cfg: TuneConfig, registry: Registry | None, op: str) -> Session:
        return cls(registry, cfg.run_dir, cfg.out or f"{Path(cfg.base).name}-{op}")

    # -- data -------------------------------------------------------------------------------------
    @staticmethod
    def read(cfg: TuneConfig, reader=data.read) -> tuple[data.Dataset, data.Dataset | None]:
        """The training data and the held-out data: ``cfg.eval``, else a share of the training."""
        train = reader(cfg.data)
        if cfg.eval:
            return train, reader(cfg.eval)
        return data.split(train, cfg.val_split, cfg.seed)

    # -- the model --------------------------------------------------------------------------------
    def open_base(self, ref: str) -> Base:
        return open_base(ref, self.reg)

    def load(self, base: Base, task: tasks.Task, labels: tuple[str, ...] = ()) -> nn.Module:
        """``base`` in the task's class with its adapters folded in; a prompt/prefix adapter
        cannot be folded (its virtual tokens would shift every position)."""
        model = model_for(base, task, labels)
        if base.manifest and base.manifest.adapters:
            model = attach.attach(model, self.reg.snapshot(base.entry) / "adapters", task, merge=True)
            if attach.virtual_tokens(model):
                raise OficinaError(f"{base.ref} carries a prompt/prefix adapter, which cannot be merged; "
                                   f"tune its base model instead")
        return model

    def prepare(self, cfg: TuneConfig, base: Base, model: nn.Module, method: Method, method_cfg,
                task: tasks.Task) -> nn.Module:
        """Apply ``method`` to ``model`` for training: seeded, gradient checkpointing as asked,
        and the fast paths (fp32 attention kernel and bf16 frozen weights under bf16, our
        dropout on the CPU), which ``train`` undoes before the model is saved."""
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        torch.manual_seed(cfg.seed)  # the method's initial weights (LoRA's A, adapters) follow the seed
        names = frozen.base_names(model)
        bf16 = cfg.precision == "bf16"
        attn = attention.use(model) if bf16 else None
        model = method.apply(model, method_cfg, task)
        dropout.speed_up(model)
        merged = bool(base.manifest and base.manifest.adapters)  # the files no longer hold these weights
        lowered = frozen.lower(model, base.folder, names) if bf16 and not merged else None
        if lowered:
            self._undo.append(lowered.restore)
        self._undo.append(lambda: attention.restore(tasks.unwrap(model), attn))
        self.base, self.model, self.method = base, model, method
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.parameters = count_weights(model)
        return model

    # -- the loop ---------------------------------------------------------------------------------
    def train(self, model: nn.Module, batches, cfg: TuneConfig, loss, evaluate, resume: bool,
              fingerprint: str, label: str | None = None) -> loop.Result:
        """The shared loop in this run's folder; the training-only fast paths undone after it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return loop.train(model, batches, cfg, self.run_dir, loss, evaluate, resume=resume,
                              fingerprint=fingerprint, label=label)
        finally:
            while self._undo:
                self._undo.pop()()

    # -- the result -------------------------------------------------------------------------------
    def artifact(self) -> Path:
        return self.run_dir / ("adapter" if self.method.artifact == "adapter" else "model")

    def save(self, task: tasks.Task, labels: tuple[str, ...], folder: Path) -> int:
        """Save what changed; returns the bytes of its weights."""
        with no_tqdm():
            save_artifact(self.model, self.method, self.base, task, labels, folder)
        return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")

    def publish(self, cfg: TuneConfig, task: tasks.Task, artifact: Path, train_ds, eval_ds,
                metrics: dict, op: str, extra: dict | None = None) -> Entry:
        """Publish ``artifact`` as ``cfg.out``: an adapter stacked on its base's manifest, or a
        whole model inheriting the base's Modelfile fields; the lineage names ``op`` (tune,
        dpo, reward...) with ``extra`` producer fields."""
        base, method, reg = self.base, self.method, self.reg
        if base.entry is not None:
            base_manifest, parent = base.manifest, base.entry.ref
        else:
            base_manifest, parent = reg.manifest_for(Path(base.source)), None
        details = {"tuning": {"method": method.name, "task": task.name}}
        producer = {
            "op": op, "method": method.name, "task": task.name,
            "base": {"ref": base.lineage_ref,
                     "digest": base.entry.digest if base.entry else "sha256:" + hashlib.sha256(
                         base_manifest.to_json()).hexdigest()},
            "hyperparameters": cfg.recipe(),
            "data": {"train": data_lineage(train_ds), "eval": eval_lineage(cfg, eval_ds)},
            "oficina": __version__,
            **(extra or {}),
        }
        if method.artifact == "adapter":
            return reg.publish(cfg.out, artifact, parent=parent, producer=producer, metrics=metrics,
                               adapter_of=base_manifest, keep=_adapter_file, details=details)
        return reg.publish(cfg.out, artifact, parent=parent, producer=producer, metrics=metrics,
                           inherit=base_manifest, details=details)


def _adapter_file(name: str) -> bool:
    return name in ("adapter_config.json", META) or name.endswith(".safetensors")


# -- the base model ---------------------------------------------------------------------------------
def open_base(ref: str, reg: Registry) -> Base:
    path = Path(ref).expanduser()
    if path.exists():
        fmt, _ = collect_files(path)
        entry, manifest, source = None, None, path
    else:
        entry = resolve(ref, reg)
        manifest, source, fmt = entry.manifest, reg.snapshot(entry), entry.manifest.format
    info = describe(source, fmt)
    if fmt == "gguf":
        loaded = load_folder(source, "gguf", info=info, cache=reg.home / "cache")
        return Base(ref, entry, manifest, source, loaded.folder, info, loaded.tokenizer, loaded.model)
    tokenizer = load_tokenizer(source, label=ref)
    if manifest and manifest.template and not is_go_template(manifest.template):
        tokenizer.chat_template = manifest.template  # a Modelfile TEMPLATE (Jinja) wins, as in api.Model
    return Base(ref, entry, manifest, source, source, info, tokenizer)


def model_for(base: Base, task: tasks.Task, labels: tuple[str, ...] = ()) -> nn.Module:
    if base.model is not None and task.auto_class == auto_class(base.info.kind):
        model, base.model = base.model, None  # hand over the loaded one (training changes it)
        return model
    return tasks.load_model(task, base.folder, labels, pad_id=pad_id(base.tokenizer))


def count_weights(model: nn.Module) -> int:
    """Parameters plus the weights a quantized layer keeps as buffers (qlora's frozen base)."""
    quantized = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    return sum(p.numel() for p in model.parameters()) + quantized


def pad_id(tok) -> int:
    for i in (tok.pad_token_id, tok.eos_token_id, 0):
        if i is not None:
            return int(i)
    return 0


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def init_distributed() -> tuple[int, int]:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def save_artifact(model: nn.Module, method: Method, base: Base, task, labels, folder: Path) -> None:
    with atomic_folder(folder) as tmp:
        method.save(getattr(model, "module", model), tmp)
        if (tmp / "adapter_config.json").is_file():  # notes peft's config has no field for
            meta = {"method": method.name, **adapter_meta(tmp),
                    "task": {"name": task.name, "labels": list(labels)}}
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if method.artifact == "model":
            base.tokenizer.save_pretrained(str(tmp))


@contextlib.contextmanager
def atomic_folder(folder: Path):
    """A temporary folder beside ``folder`` to write into; on success it replaces ``folder``
    whole, on any error (Ctrl-C included) it is removed: never a half-written result."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
