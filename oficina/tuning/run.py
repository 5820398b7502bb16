"""A tuning run, from recipe to registry version: open the base, read and encode the data, apply
the method, run the shared loop, save what changed and register it with its lineage (base
digest, method and hyper-parameters, data digests, final metrics). Also ``merge`` (fold LoRA-like
adapters into the base weights) and ``load_tuned`` (a tuned model in its task's class)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import OficinaError
from ..registry.manifest import Manifest
from ..registry.registry import Entry, Registry
from ..report import reporter
from . import attach, attention, data, dropout, forgetting, frozen, loop, tasks
from .batches import Batches
from .config import TuneConfig
from .method import META, Method, adapter_meta, get


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


@dataclass
class TuneResult:
    config: TuneConfig
    method: str
    task: str
    run_dir: Path
    artifact: Path                # the saved adapter folder or model folder
    trainable: int
    parameters: int
    artifact_bytes: int
    loop: loop.Result
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    entry: Entry | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def curve(self) -> Path:
        return self.run_dir / "loss.png"


# -- the run ----------------------------------------------------------------------------------------
def tune(cfg: TuneConfig, registry: Registry | None = None, resume: bool = False) -> TuneResult:
    method = get(cfg.method)
    method_cfg = cfg.method_config()
    if not cfg.base:
        raise OficinaError("no base model: give BASE (a registry name or model folder)")
    if not cfg.data:
        raise OficinaError("no training data: give --data FILE (.jsonl, .txt or .csv)")
    rank, world = init_distributed()
    reg = registry or Registry()

    train_ds = data.read(cfg.data)
    eval_ds = data.read(cfg.eval) if cfg.eval else None
    if eval_ds is None:
        train_ds, eval_ds = data.split(train_ds, cfg.val_split, cfg.seed)
    base = open_base(cfg.base, reg)
    requested = cfg.task
    if requested == "auto":
        requested = {"labelled": "classification", "pair": "seq2seq"}.get(train_ds.shape, "auto")
    task = tasks.for_model(base.info.kind, requested)
    labels = tuple(cfg.labels or train_ds.labels) if task.name == "classification" else ()
    if task.name == "classification" and len(labels) < 2:
        raise OficinaError(f"{train_ds.path}: classification needs at least two labels (found {list(labels)})")
    ctx = tasks.Context(base.tokenizer, cfg.max_length, cfg.train_on, cfg.truncate,
                        split_long=cfg.packing, labels=labels,
                        system=base.manifest.system if base.manifest else None,
                        messages=tuple(base.manifest.messages) if base.manifest else ())
    train_ex = tasks.encode(train_ds, task, ctx)
    eval_ex = tasks.encode(eval_ds, task, dataclasses.replace(ctx, split_long=True)) if eval_ds else []

    model = model_for(base, task, labels)
    if base.manifest and base.manifest.adapters:
        model = attach.attach(model, reg.snapshot(base.entry) / "adapters", task, merge=True)
        if attach._virtual_tokens(model):
            raise OficinaError(f"{base.ref} carries a prompt/prefix adapter, which cannot be merged; "
                               f"tune its base model instead")
    check_text = forgetting.general_text() if cfg.forgetting and task.name == "causal" else None
    window = min(256, (base.info.context_length or 512) // 2)  # room for virtual tokens
    ppl_before = forgetting.perplexity(model, base.tokenizer, check_text, window) if check_text else None
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
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = _count_weights(model)

    pad = pad_id(base.tokenizer)
    batches = Batches(train_ex, cfg.batch_size, pad, cfg.seed, group_by_length=cfg.group_by_length,
                      packing=cfg.max_length if cfg.packing and task.packable else None,
                      rank=rank, world=world)
    evaluate = _evaluator(task, Batches(eval_ex, cfg.batch_size, pad, shuffle=False)) if eval_ex else None
    cfg, chosen = resolve_defaults(cfg, method, method_cfg, len(batches), total)
    run_dir = Path(cfg.run_dir).expanduser() if cfg.run_dir else reg.home / "runs" / slug(
        cfg.out or f"{Path(cfg.base).name}-{cfg.method}")
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256(json.dumps(
        [cfg.fingerprint(), train_ds.digest, eval_ds.digest if eval_ds else None, base_id(base)]
    ).encode()).hexdigest()[:16]
    reporter().note(f"{method.name} on {base.ref} ({task.name}): {trainable:,} of {total:,} parameters "
                    f"train ({100 * trainable / total:.3g}%); {len(train_ex)} training and "
                    f"{len(eval_ex)} validation examples; run folder {run_dir}")
    reporter().note(f"settings: {chosen}")
    result = loop.train(model, batches, cfg, run_dir, task.loss, evaluate, resume=resume,
                        fingerprint=fingerprint)
    if lowered:
        lowered.restore()
    attention.restore(tasks.unwrap(model), attn)
    ppl_after = forgetting.perplexity(model, base.tokenizer, check_text, window) if check_text else None

    artifact = run_dir / ("adapter" if method.artifact == "adapter" else "model")
    out = TuneResult(cfg, method.name, task.name, run_dir, artifact, trainable, total, 0, result,
                     ppl_before, ppl_after)
    if rank == 0:
        save_artifact(model, method, base, task, labels, artifact)
        out.artifact_bytes = sum(p.stat().st_size for p in artifact.iterdir() if p.suffix == ".safetensors")
        out.metrics = _metrics(out)
        if cfg.out:
            out.entry = register(reg, cfg, base, method, task, artifact, train_ds, eval_ds, out.metrics)
    return out


def resolve_defaults(cfg: TuneConfig, method: Method, method_cfg, batches: int,
                     parameters: int) -> tuple[TuneConfig, str]:
    """The recipe with what it left open filled in (``defaults.py``), and one line saying what
    the run uses and which values were chosen for it, for the run's header."""
    from . import defaults

    steps_per_epoch = max(1, -(-batches // cfg.grad_accum))
    auto = {}
    if cfg.epochs is None and cfg.max_steps is None:
        auto["epochs"] = defaults.epochs(steps_per_epoch)
    if cfg.learning_rate is None:
        auto["learning_rate"], why_lr = defaults.learning_rate(method, parameters)
    cfg = dataclasses.replace(cfg, **auto)
    steps = cfg.max_steps or (cfg.epochs or 1) * steps_per_epoch
    mark = lambda key: " (chosen)" if key in auto else ""
    parts = [f"{steps} optimizer steps" + (f" = {cfg.epochs} epochs{mark('epochs')} of {steps_per_epoch}"
                                           if not cfg.max_steps else ""),
             f"batch {cfg.batch_size}" + (f" x {cfg.grad_accum}" if cfg.grad_accum > 1 else ""),
             f"learning rate {cfg.lr:g}" + (f" ({why_lr})" if "learning_rate" in auto else ""),
             f"{cfg.schedule} schedule"]
    own = {k: v for k, v in dataclasses.asdict(method_cfg).items() if v is not None}
    if own:
        parts.append(f"{method.name} " + ", ".join(f"{k} {_setting(v)}" for k, v in own.items()))
    note = "; ".join(parts)
    if "epochs" in auto:
        from .defaults import MAX_EPOCHS, MIN_STEPS

        note += f" (epochs chosen for at least {MIN_STEPS} steps, at most {MAX_EPOCHS}; --epochs to set)"
    return cfg, note


def _setting(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else f"{v:g}" if isinstance(v, float) else str(v)


def _metrics(r: TuneResult) -> dict[str, Any]:
    lp = r.loop
    m = {"train_loss": lp.train_loss, "steps": lp.steps, "epochs": round(lp.epochs, 3),
         "tokens": lp.tokens, "tokens_per_s": round(lp.tokens_per_s, 1),
         "train_seconds": round(lp.seconds, 2), "wall_seconds": round(lp.wall_seconds, 2),
         "peak_memory": lp.peak_memory, "trainable_parameters": r.trainable,
         "parameters": r.parameters, "trainable_percent": 100 * r.trainable / max(r.parameters, 1),
         "artifact_bytes": r.artifact_bytes}
    m.update({f"val_{k}": v for k, v in lp.val.items()})
    if r.perplexity_before is not None:
        m.update(perplexity_before=r.perplexity_before, perplexity_after=r.perplexity_after)
    return m


def _evaluator(task: tasks.Task, batches: Batches):
    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        loss_sum, weight, counts = 0.0, 0, {}
        for b in batches.epoch(0):
            inputs = {k: v.to(device) for k, v in b.inputs.items()}
            n = int((inputs["labels"] != tasks.IGNORE).sum())
            loss_sum += float(task.loss(model, inputs)) * n
            weight += n
            if task.score:
                for k, v in task.score(model, inputs).items():
                    counts[k] = counts.get(k, 0.0) + v
        out = {"loss": loss_sum / max(weight, 1)}
        if counts.get("count"):
            out["accuracy"] = counts["correct"] / counts["count"]
        return out

    return evaluate


# -- the base model ---------------------------------------------------------------------------------
def open_base(ref: str, reg: Registry) -> Base:
    from transformers import AutoTokenizer

    from ..api import resolve
    from ..models.info import describe
    from ..models.loader import _quiet_transformers, load_folder
    from ..registry.sources import collect_files

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
    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    from ..formats.template import is_go_template

    if manifest and manifest.template and not is_go_template(manifest.template):
        tokenizer.chat_template = manifest.template  # a Modelfile TEMPLATE (Jinja) wins, as in api.Model
    return Base(ref, entry, manifest, source, source, info, tokenizer)


def model_for(base: Base, task: tasks.Task, labels: tuple[str, ...] = ()) -> nn.Module:
    from ..models.loader import AUTO_CLASSES

    if base.model is not None and task.auto_class == AUTO_CLASSES[base.info.kind]:
        model, base.model = base.model, None  # hand over the loaded one (training changes it)
        return model
    return tasks.load_model(task, base.folder, labels, pad_id=pad_id(base.tokenizer))


def _count_weights(model: nn.Module) -> int:
    """Parameters plus the weights a quantized layer keeps as buffers (qlora's frozen base)."""
    from ..quant import QuantLinear

    quantized = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    return sum(p.numel() for p in model.parameters()) + quantized


def pad_id(tok) -> int:
    for i in (tok.pad_token_id, tok.eos_token_id, 0):
        if i is not None:
            return int(i)
    return 0


def base_id(base: Base) -> str:
    return base.entry.digest if base.entry else str(Path(base.source).resolve())


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


# -- distributed ------------------------------------------------------------------------------------
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


# -- saving and registering -------------------------------------------------------------------------
def save_artifact(model: nn.Module, method: Method, base: Base, task, labels, folder: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        inner = getattr(model, "module", model)
        method.save(inner, tmp)
        if (tmp / "adapter_config.json").is_file():  # notes peft's config has no field for
            meta = {"method": method.name, **adapter_meta(tmp),
                    "task": {"name": task.name, "labels": list(labels)}}
            (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if method.artifact == "model":
            base.tokenizer.save_pretrained(str(tmp))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _base_manifest(reg: Registry, base: Base) -> tuple[Manifest, str | None]:
    if base.entry is not None:
        return base.manifest, base.entry.ref
    from ..models.info import describe
    from ..registry.sources import collect_files, store_files

    fmt, files = collect_files(Path(base.source))
    manifest = Manifest(format=fmt, files=store_files(reg, files))
    manifest.details = describe(reg.snapshot_for(manifest), fmt).summary()
    return manifest, None


def register(reg: Registry, cfg: TuneConfig, base: Base, method: Method, task, artifact: Path,
             train_ds, eval_ds, metrics: dict, op: str = "tune", extra: dict | None = None) -> Entry:
    """Register ``artifact`` as ``cfg.out``: an adapter stacked on its base's manifest, or a whole
    model; the lineage names ``op`` (tune, dpo, reward...) with ``extra`` producer fields."""
    from ..models.info import describe
    from ..registry.sources import collect_files, store_files

    base_manifest, parent = _base_manifest(reg, base)
    tuning = {"method": method.name, "task": task.name}
    if method.artifact == "adapter":
        index = len({a.path.split("/", 1)[0] for a in base_manifest.adapters})
        files = [(f"{index}/{p.name}", p) for p in sorted(artifact.iterdir())
                 if p.name in ("adapter_config.json", META) or p.name.endswith(".safetensors")]
        manifest = dataclasses.replace(base_manifest, adapters=list(base_manifest.adapters) + store_files(reg, files),
                                       params=dict(base_manifest.params),
                                       details={**base_manifest.details, "tuning": tuning})
    else:
        fmt, files = collect_files(artifact)
        manifest = Manifest(format=fmt, files=store_files(reg, files), params=dict(base_manifest.params),
                            template=base_manifest.template, system=base_manifest.system,
                            messages=list(base_manifest.messages), license=list(base_manifest.license))
        manifest.details = {**describe(reg.snapshot_for(manifest), fmt).summary(), "tuning": tuning}
    producer = {
        "op": op, "method": method.name, "task": task.name,
        "base": {"ref": base.entry.ref if base.entry else str(base.source),
                 "digest": base.entry.digest if base.entry else "sha256:" + hashlib.sha256(
                     base_manifest.to_json()).hexdigest()},
        "hyperparameters": cfg.recipe(),
        "data": {"train": data_lineage(train_ds),
                 "eval": data_lineage(eval_ds) if cfg.eval else (
                     {"held_out_of_train": cfg.val_split, "records": len(eval_ds)} if eval_ds else None)},
        "oficina": __version__,
        **(extra or {}),
    }
    return reg.add(cfg.out, manifest, parent=parent, producer=producer, metrics=metrics)


def data_lineage(ds) -> dict:
    return {"path": str(ds.path), "digest": ds.digest, "records": len(ds), "shape": ds.shape}


# -- using a tuned model ----------------------------------------------------------------------------
@dataclass
class Tuned:
    """A tuned registry model in its task's class, adapters applied as trained (not merged)."""

    model: nn.Module
    tokenizer: Any
    task: tasks.Task
    labels: tuple[str, ...]
    entry: Entry

    @torch.no_grad()
    def classify(self, texts: list[str], batch_size: int = 32) -> list[str]:
        if self.task.name != "classification":
            raise OficinaError(f"{self.entry.ref} is a {self.task.name} model, not a classifier")
        device = next(self.model.parameters()).device
        out: list[str] = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s:s + batch_size], padding=True, truncation=True, return_tensors="pt")
            logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits
            out += [self.labels[i] for i in logits.argmax(-1).tolist()]
        return out


def load_tuned(name: str, registry: Registry | None = None, merge: bool = False) -> Tuned:
    reg = registry or Registry()
    base = open_base(name, reg)
    root = reg.snapshot(base.entry) / "adapters"
    found = attach.folders(root)
    task, labels = attach.task_of(found)
    if task is None:  # a whole model: its config says what it is
        labels = tuple(getattr(_hf_config(base.folder), "id2label", {}).values()) \
            if "ForSequenceClassification" in base.info.architecture else ()
        task = tasks.for_model(base.info.kind, "classification" if labels else "auto")
    model = model_for(base, task, labels)
    model = attach.attach(model, root, task, merge=merge).eval()
    return Tuned(model, base.tokenizer, task, labels, base.entry)


def _hf_config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder))


def merge(name: str, out: str | None = None, registry: Registry | None = None) -> Entry:
    """Fold the adapters of ``name`` into its base weights: a new version (of ``out``, or of
    ``name``) that is a whole model with no adapters."""
    from ..models.info import describe
    from ..registry.sources import collect_files, store_files

    reg = registry or Registry()
    base = open_base(name, reg)
    if not base.manifest.adapters:
        raise OficinaError(f"{base.entry.ref} has no adapters to merge")
    root = reg.snapshot(base.entry) / "adapters"
    methods = []
    for folder in attach.folders(root):
        if (folder / "adapter.gguf").exists():
            raise OficinaError(f"adapter {folder.name} of {base.entry.ref} is a GGUF LoRA; merge it with llama.cpp")
        m = get(attach.method_of_adapter(folder))
        if m.merge is None:
            raise OficinaError(f"adapter {folder.name} of {base.entry.ref} is {m.name}, which cannot be "
                               f"folded into the weights (only LoRA-like methods can: "
                               f"{', '.join(n for n, x in _methods().items() if x.merge)})")
        methods.append(m.name)
    task, labels = attach.task_of(attach.folders(root))
    task = task or tasks.for_model(base.info.kind)
    model = attach.attach(model_for(base, task, labels), root, task, merge=True)
    work = reg.home / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        from ..models.loader import no_tqdm

        with no_tqdm(), reporter().progress("writing merged weights", None):
            model.save_pretrained(tmp, safe_serialization=True)
            base.tokenizer.save_pretrained(tmp)
        fmt, files = collect_files(Path(tmp))
        m = base.manifest
        manifest = Manifest(format=fmt, files=store_files(reg, files), params=dict(m.params),
                            template=m.template, system=m.system, messages=list(m.messages),
                            license=list(m.license))
        manifest.details = {**describe(reg.snapshot_for(manifest), fmt).summary(),
                            "tuning": {"merged": methods}}
    return reg.add(out or base.entry.name, manifest, parent=base.entry.ref,
                   producer={"op": "merge", "from": base.entry.ref, "adapters": methods,
                             **({"note": "qlora: merged into the dequantized base"} if "qlora" in methods else {})},
                   metrics=dict(base.entry.metrics))


def _methods():
    from .method import load_all

    return load_all()
