"""Making a new model from nothing: a byte-level BPE tokenizer trained on a corpus, an
architecture config with the names ``oficina show`` prints, one objective per family (next
token for decoder-only, masked tokens for encoder-only, span corruption for encoder-decoder),
a corpus streamed from disk, and the shared training loop of ``oficina.tuning``::

    from oficina.pretrain import PretrainConfig, prepare, pretrain
    plan = prepare(PretrainConfig.from_file("small.yaml"), data="corpus.txt", out="tiny")
    print(plan.parameters, plan.memory)       # before any compute
    result = pretrain(plan)                     # a registry model, like any other

Modules: ``config`` (the recipe), ``families`` (Llama-, BERT-, T5-like rows), ``objectives``,
``corpus`` (documents -> token files), ``blocks`` (token files -> batches), ``tokenizer``,
``size`` (parameter count and memory estimate), ``run``.
"""

from .config import ArchConfig, PretrainConfig

__all__ = ["ArchConfig", "PretrainConfig", "prepare", "pretrain", "train_tokenizer"]


def __getattr__(name):
    # the run pulls in torch and transformers; import it when used
    if name in ("prepare", "pretrain"):
        from . import run

        return getattr(run, name)
    if name == "train_tokenizer":
        from .tokenizer import train_tokenizer

        return train_tokenizer
    raise AttributeError(f"module 'oficina.pretrain' has no attribute {name!r}")
