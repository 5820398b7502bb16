"""``content`` and ``classifier=MODEL``: a sequence classifier from the registry as a filter.

``content`` is all-MiniLM-L6-v2 with a classification head, trained by oficina's own tuning
(LoRA, ``oficina/tuning``) on ``oficina/data/safety/content_train.jsonl`` -- texts written for this
project (CC0, English and Portuguese) in seven labels: ``benign`` (including texts that only
mention the topics: news, history, support, policy) and the six it blocks, ``violence``,
``self_harm``, ``sexual``, ``hate``, ``illegal``, ``injection`` (prompt injection / jailbreak).
It is registered as the model ``guard-content``, trained the first time the guard is used (about a
minute on a laptop CPU, with a progress bar) or by ``oficina guard train``.

The rule, for any classifier: a label named like ``benign``/``safe``/``none``/``neutral``/``ok``
allows; every other label blocks when it is the most probable one and its probability is at least
``THRESHOLD``; below that it flags. Long texts are read in pieces of a few sentences (the
classifier was trained on short texts), and the most severe piece decides; its span is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..registry.registry import Registry
from ..report import reporter
from ..tuning import TuneConfig
from .grounding import sentences
from .guard import Guard, GuardError, Span, Verdict, register

CONTENT_MODEL = "guard-content"
SAFE_LABELS = ("benign", "safe", "none", "neutral", "ok", "allow")
THRESHOLD = 0.5
PIECE_CHARS = 400  # about 100 tokens: the length of the training texts, with room
MAX_TOKENS = 128


def data_path(name: str) -> Path:
    return Path(str(files("oficina") / "data" / "safety" / name))


def content_recipe(out: str = CONTENT_MODEL):
    """The recipe ``guard-content`` is trained with (the same one ``oficina guard train`` runs)."""
    return TuneConfig(base="minilm", method="lora", task="classification",
                      data=str(data_path("content_train.jsonl")), out=out, epochs=12,
                      batch_size=16, learning_rate=1e-3, max_length=MAX_TOKENS, val_split=0.1,
                      seed=0, options={"r": 16, "alpha": 32,
                                       "target_modules": ["query", "key", "value", "dense"]})


def train_content(registry=None, out: str = CONTENT_MODEL, **overrides):
    """Train and register the content classifier; returns the tuning result."""
    import dataclasses

    # here, not at the top: loads torch, and `oficina guard`'s flags come from this module
    from ..tuning import tune

    cfg = dataclasses.replace(content_recipe(out), **overrides)
    return tune(cfg, registry)


def pieces(text: str) -> list[tuple[int, int]]:
    """(start, end) of consecutive pieces of whole sentences, each up to ~PIECE_CHARS."""
    out: list[tuple[int, int]] = []
    for a, b in sentences(text):
        if out and b - out[-1][0] <= PIECE_CHARS:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out or [(0, len(text))]


class Classifier(Guard):
    # In a stream the whole answer so far is re-read at each sentence end: a short fragment alone
    # ("Here's an example:" + a code fence) reads as an injection to a model trained on short
    # texts, and was blocked when classified without the sentences before it.
    lookback = None

    def __init__(self, model_name: str, registry=None, train_if_missing: bool = False):
        reg = registry or Registry()
        if reg.find(model_name) is None:
            if not train_if_missing:
                raise GuardError(f"no classifier {model_name!r} in the registry")

            reporter().note(f"training the content classifier {model_name!r} once (oficina guard train)")
            train_content(reg, model_name)
        import torch

        # here, not at the top: loads torch (see train_content)
        from ..tuning import load_tuned

        tuned = load_tuned(model_name, reg, merge=True)
        if tuned.task.name != "classification":
            raise GuardError(f"{model_name} is a {tuned.task.name} model, not a classifier")
        self.model, self.tokenizer, self.labels = tuned.model.eval(), tuned.tokenizer, tuned.labels
        self.entry = tuned.entry
        self.torch = torch

    def probabilities(self, texts: list[str]) -> list[dict[str, float]]:
        torch = self.torch
        with torch.inference_mode():
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS,
                                 return_tensors="pt")
            p = self.model(**enc).logits.float().softmax(-1).tolist()
        return [dict(zip(self.labels, row)) for row in p]

    def check(self, text: str, context: Mapping[str, Any] | None = None) -> Verdict:
        if not text.strip():
            return Verdict("allow", guard=self.name)
        spans = pieces(text)
        best: tuple[int, float, str, tuple[int, int]] = (0, 0.0, "", (0, 0))
        for span, probs in zip(spans, self.probabilities([text[a:b] for a, b in spans])):
            label = max(probs, key=probs.get)
            if label.lower() in SAFE_LABELS:
                continue
            p = probs[label]
            severity = 2 if p >= THRESHOLD else 1
            if (severity, p) > best[:2]:
                best = (severity, p, label, span)
        severity, p, label, (a, b) = best
        if not severity:
            return Verdict("allow", guard=self.name)
        return Verdict("block" if severity == 2 else "flag", label, p, (Span(a, b, label),), self.name)


@register("content", "MiniLM classifier: violence, self_harm, sexual, hate, illegal, injection")
def _content(arg: str | None) -> Guard:
    return Classifier(CONTENT_MODEL, train_if_missing=True)


@register("classifier", "any registry sequence classifier (oficina tune ... with labels)", arg="MODEL")
def _classifier(arg: str | None) -> Guard:
    if not arg:
        raise GuardError("the classifier guard needs a model: classifier=NAME")
    return Classifier(arg)
