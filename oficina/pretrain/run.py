"""A pretraining run, from recipe to registry model: ``prepare`` checks everything and sizes the
model before any training (the tokenizer is trained here when the recipe gives none);
``pretrain`` tokenizes the corpus to disk, trains with the shared loop (``tuning.loop.train``:
checkpoints, resume, NaN stop, Ctrl-C, torchrun) and registers the result with its lineage."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import InvalidOptions, OficinaError
from ..models.loader import device, no_tqdm
from ..registry.registry import Entry, Registry
from ..report import reporter
from ..tuning import loop
from ..tuning.session import Session, atomic_folder, loop_metrics
from .blocks import BlockBatches
from .config import LOOP_FIELDS, PretrainConfig
from .corpus import Corpus, Tokens, held_out, tokenize, tokenizer_digest, unigram_perplexity
from .families import Family, family
from .objectives import Objective, objective
from .samples import samples
from .size import Size, build, estimate
from .tokenizer import Special, load_tokenizer, special_ids, train_tokenizer


@dataclass
class Plan:
    """A checked recipe: everything known before training starts."""

    config: PretrainConfig
    corpus: Corpus
    eval_corpus: Corpus | None
    out: str | None
    tokenizer: Any
    tokenizer_source: str
    special: Special
    family: Family
    objective: Objective
    hf_config: Any
    size: Size
    run_dir: Path
    registry: Registry


@dataclass
class PretrainResult:
    plan: Plan
    model: nn.Module                   # the trained model, in memory
    loop: loop.Result
    folder: Path                       # the saved model (Hugging Face layout)
    tokens: Tokens
    unigram_perplexity: float
    perplexity_init: float | None
    samples: list[tuple[str, str]] = field(default_factory=list)
    entry: Entry | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def curve(self) -> Path:
        return self.plan.run_dir / "loss.png"


def check_vocab(cfg: PretrainConfig, tok, source: str) -> PretrainConfig:
    n = len(tok)
    if cfg.arch.vocab_size is None:
        return dataclasses.replace(cfg, arch=dataclasses.replace(cfg.arch, vocab_size=n))
    if cfg.arch.vocab_size != n:
        raise InvalidOptions(f"vocab_size {cfg.arch.vocab_size} does not match the tokenizer ({n} tokens, "
                             f"{source}); set vocab_size: {n} or leave it out")
    return cfg


def prepare(cfg: PretrainConfig, data: str | Path, out: str | None = None,
            registry: Registry | None = None, tokenizer: str | None = None) -> Plan:
    session = Session(registry, cfg.train.run_dir, out or f"pretrain-{cfg.arch.family}")
    reg, rank, world, run_dir = session.reg, session.rank, session.world, session.run_dir
    corpus = Corpus.open(data)
    eval_corpus = Corpus.open(cfg.train.eval) if cfg.train.eval else None
    fam = family(cfg.arch.family)
    obj = objective(fam.objective)
    ref = tokenizer or cfg.tokenizer
    if ref:
        tok = load_tokenizer(ref, reg)
        source = f"from {ref}"
        cfg = check_vocab(cfg, tok, source)
    else:
        if cfg.arch.vocab_size is None:
            raise InvalidOptions("vocab_size: give the vocabulary size (a byte-level BPE tokenizer of that "
                                 "size is trained on the corpus) or a tokenizer")
        sentinels = 0
        if fam.objective == "span-corruption":
            sentinels = cfg.objective.spans(cfg.train.max_length)[1]
        if rank == 0:
            split = 0.0 if eval_corpus else cfg.train.val_split
            tok = _trained_tokenizer(corpus, cfg.arch.vocab_size, sentinels, split, cfg.train.seed,
                                     run_dir / "tokenizer")
        _barrier(world)
        if rank != 0:
            tok = load_tokenizer(str(run_dir / "tokenizer"))
        source = f"byte-level BPE trained on {corpus.path.name} (training documents)"
        if len(tok) != cfg.arch.vocab_size:  # a small corpus has fewer pairs to merge (warned)
            cfg = dataclasses.replace(cfg, arch=dataclasses.replace(cfg.arch, vocab_size=len(tok)))
    sp = special_ids(tok)
    obj.check(cfg.objective, sp, cfg.train.max_length)
    hf_config = fam.hf_config(cfg.arch, sp)
    size = estimate(cfg.arch, hf_config, fam.model_class, cfg.train.batch_size, cfg.train.max_length,
                    cfg.train.precision, cfg.train.gradient_checkpointing)
    return Plan(cfg, corpus, eval_corpus, out, tok, source, sp, fam, obj, hf_config, size, run_dir, reg)


def _trained_tokenizer(corpus: Corpus, vocab_size: int, sentinels: int, val_split: float, seed: int,
                       folder: Path):
    """A tokenizer trained on the training documents of ``corpus`` (the held-out ones stay
    unseen): the one already in ``folder`` when it was trained the same way (a resumed run), else
    a new one."""
    key = {"corpus": corpus.digest(), "vocab_size": vocab_size, "sentinels": sentinels,
           "val_split": val_split, "seed": seed}
    stamp = folder / "trained_on.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return load_tokenizer(str(folder))
    tok = train_tokenizer(corpus, vocab_size, folder, sentinels=sentinels, skip=held_out(val_split, seed))
    stamp.write_text(json.dumps(key))
    return tok


def pretrain(plan: Plan, resume: bool = False) -> PretrainResult:
    cfg, obj, sp, tok = plan.config, plan.objective, plan.special, plan.tokenizer
    run = Session(plan.registry, plan.run_dir, "")
    rank, world = run.rank, run.world
    length, seed = cfg.train.max_length, cfg.train.seed
    if rank == 0:
        tokens = tokenize(plan.corpus, tok, plan.run_dir / "tokens", cfg.train.val_split, seed, plan.eval_corpus)
    _barrier(world)
    if rank != 0:
        tokens = tokenize(plan.corpus, tok, plan.run_dir / "tokens", cfg.train.val_split, seed, plan.eval_corpus)
    train_tokens, val_tokens = tokens.train(), tokens.val()
    batches = BlockBatches(train_tokens, length, cfg.train.batch_size, obj, cfg.objective, sp, seed,
                           rank=rank, world=world)
    if batches.blocks == 0:
        raise OficinaError(f"{plan.corpus.path}: {len(train_tokens)} training tokens, fewer than one block "
                           f"of train.max_length {length}")
    val_batches = BlockBatches(val_tokens, length, cfg.train.batch_size, obj, cfg.objective, sp, seed,
                               shuffle=False, max_blocks=max(1, cfg.eval_tokens // length))
    evaluate = _evaluator(obj, val_batches) if val_batches.blocks else None
    if evaluate is None:
        reporter().warn(f"no validation: the held-out documents make {len(val_tokens)} tokens, fewer than one "
                        f"block of {length}; give train.eval a file or raise train.val_split")
    unigram = unigram_perplexity(train_tokens, val_tokens[:val_batches.token_count], sp.vocab)

    torch.manual_seed(seed)
    model = build(plan.hf_config, plan.family.model_class).to(device())
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ppl_init = None
    if evaluate is not None and not resume:
        model.eval()
        with torch.no_grad():
            ppl_init = evaluate(model)["perplexity"]
        model.train()
    loop_cfg = dataclasses.replace(cfg.train, base=str(plan.corpus.path), data=str(plan.corpus.path),
                                   out=plan.out)
    fingerprint = cfg.fingerprint(plan.corpus.digest(), plan.eval_corpus.digest() if plan.eval_corpus else None,
                                  tokenizer_digest(tok))
    reporter().note(f"{plan.family.like} {plan.family.kind} model, {plan.size.parameters:,} parameters, "
                    f"{obj.name} objective; {batches.token_count:,} training tokens in {batches.blocks:,} "
                    f"blocks of {length} ({tokens.documents[0]:,} documents), {val_batches.token_count:,} "
                    f"validation tokens; unigram perplexity {unigram:.1f}; run folder {plan.run_dir}")
    result = run.train(model, batches, loop_cfg, obj.loss, evaluate, resume, fingerprint, label="pretrain")
    out = PretrainResult(plan, model, result, plan.run_dir / "model", tokens, unigram, ppl_init)
    if rank == 0:
        save_model(model, tok, cfg.arch.context_length, out.folder)

        out.samples = samples(model, tok, plan.family.kind, cfg.samples, sp, cfg.arch.context_length, seed)
        out.metrics = _metrics(out)
        if plan.out:
            out.entry = plan.registry.publish(plan.out, out.folder, producer=_producer(out, fingerprint),
                                              metrics=out.metrics)
    return out


def _evaluator(obj: Objective, batches: BlockBatches):
    def evaluate(model: nn.Module) -> dict[str, float]:
        dev = next(model.parameters()).device
        total, count = 0.0, 0
        for b in batches.epoch(0):
            inputs = {k: v.to(dev) for k, v in b.inputs.items()}
            n = obj.targets(inputs)
            total += float(obj.loss(model, inputs)) * n
            count += n
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    return evaluate


def _metrics(r: PretrainResult) -> dict[str, Any]:
    lp, size = r.loop, r.plan.size
    m = {**loop_metrics(lp), "parameters": size.parameters, "memory_estimate": size.total,
         "unigram_perplexity": r.unigram_perplexity}
    if r.perplexity_init is not None:
        m["perplexity_init"] = r.perplexity_init
    m.update({f"val_{k}": v for k, v in lp.val.items()})
    return m


def _producer(r: PretrainResult, fingerprint: str) -> dict[str, Any]:
    p, cfg = r.plan, r.plan.config

    def corpus(c: Corpus | None, docs: int, tokens: int) -> dict | None:
        return None if c is None else {"path": str(c.path), "digest": c.digest(), "documents": docs, "tokens": tokens}

    val_docs = r.tokens.documents[1]
    return {
        "op": "pretrain", "family": p.family.name, "kind": p.family.kind, "objective": p.objective.name,
        "architecture": cfg.arch.to_dict(), "objective_settings": dataclasses.asdict(cfg.objective),
        "hyperparameters": {k: getattr(cfg.train, k) for k in LOOP_FIELDS},
        "tokenizer": {"source": p.tokenizer_source, "digest": tokenizer_digest(p.tokenizer), "size": len(p.tokenizer)},
        "data": {"train": corpus(p.corpus, r.tokens.documents[0], r.tokens.train_count),
                 "eval": corpus(p.eval_corpus, val_docs, r.tokens.val_count) or
                 {"held_out_of_train": cfg.train.val_split, "documents": val_docs, "tokens": r.tokens.val_count}},
        "fingerprint": fingerprint, "oficina": __version__,
    }


# -- saving and registering -------------------------------------------------------------------------
def save_model(model: nn.Module, tok, context_length: int | None, folder: Path) -> Path:
    """The model and its tokenizer as a Hugging Face folder, written atomically."""
    with atomic_folder(folder) as tmp, no_tqdm():
        getattr(model, "module", model).save_pretrained(str(tmp), safe_serialization=True)
        if context_length:
            tok.model_max_length = context_length
        tok.save_pretrained(str(tmp))
    return Path(folder)


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
