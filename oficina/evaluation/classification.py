"""``cls``: text classification, ``{"text", "label"}`` per line, for models with a sequence-
classification head (an encoder such as BERT fine-tuned with a head, or any
``*ForSequenceClassification``). ``label`` is a label name from the model's ``id2label`` or an
integer class index.

Reported: accuracy (with its standard error), macro-F1 (the unweighted mean of per-class F1, with
a bootstrap standard error) and the confusion matrix (rows: true label, columns: predicted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError
from ..report import reporter
from .stats import bootstrap_stderr, mean, mean_stderr
from .tasks import EvalConfig, Kind, Metric, TaskResult, need_str, read_jsonl, register

HEAD_SUFFIX = "ForSequenceClassification"


@dataclass(frozen=True)
class Item:
    text: str
    label: str | int
    where: str  # file:line, for label errors found once the model's labels are known


def check_item(obj: dict, err) -> Item:
    text = need_str(obj, "text", err)
    label = obj.get("label")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise err("'label' must be a label name or an integer class index")
    return Item(text, label, err.where)


def classifier(model):
    """The model with its classification head: the loaded one when it has the head, else the
    folder reloaded through AutoModelForSequenceClassification when its config names a
    ``*ForSequenceClassification`` architecture (the loader loads encoders as bare AutoModel)."""
    lm = model.torch_model
    if type(lm).__name__.endswith(HEAD_SUFFIX):
        return lm
    cached = getattr(model, "_oficina_classifier", None)
    if cached is not None:
        return cached
    archs = getattr(lm.config, "architectures", None) or []
    if not any(a.endswith(HEAD_SUFFIX) for a in archs):
        return None
    import torch
    import transformers

    # here, not at the top: loads torch, and `oficina eval`'s flags come from this package
    from ..models.loader import no_tqdm

    with no_tqdm():
        head = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(model.loaded.folder), dtype=torch.float32)
    head.eval().to(next(lm.parameters()).device)
    model._oficina_classifier = head
    return head


def macro_f1(pairs: list[tuple[int, int]], n: int) -> float:
    f1s = []
    for c in range(n):
        tp = sum(1 for y, p in pairs if y == c and p == c)
        fp = sum(1 for y, p in pairs if y != c and p == c)
        fn = sum(1 for y, p in pairs if y == c and p != c)
        if tp + fp + fn == 0:
            continue  # a class absent from both truth and predictions does not count
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return mean(f1s)


@register
class Classification(Kind):
    name = "cls"
    title = "classification"
    builtin = "cls.jsonl"
    headline = ("acc", "macro_f1")

    def check(self, model) -> str | None:
        archs = getattr(model.torch_model.config, "architectures", None) or []
        if type(model.torch_model).__name__.endswith(HEAD_SUFFIX) or \
                any(a.endswith(HEAD_SUFFIX) for a in archs):
            return None
        return "a sequence-classification head (a *ForSequenceClassification model)"

    def load(self, path: Path) -> list[Item]:
        return read_jsonl(path, check_item)

    def run(self, model, items: list[Item], cfg: EvalConfig, label: str) -> TaskResult:
        import torch

        t0 = time.perf_counter()
        head = classifier(model)
        names = [str(head.config.id2label[i]) for i in range(head.config.num_labels)]
        index = {n: i for i, n in enumerate(names)}
        truth = []
        for it in items:
            y = it.label if isinstance(it.label, int) else index.get(it.label)
            if y is None or not 0 <= y < len(names):
                raise FormatError(f"{it.where}: label {it.label!r} is not one of the model's "
                                  f"labels: {', '.join(names)} (or 0 to {len(names) - 1})")
            truth.append(y)
        tok = model.tokenizer
        max_len = min(model.info.context_length or 512, 512)
        preds: list[int] = []
        per_batch = max(1, cfg.batch_tokens // max_len)
        with reporter().progress(f"{label} · cls · {len(items)} texts", len(items)) as bar, \
                torch.inference_mode():
            for s in range(0, len(items), per_batch):
                texts = [it.text for it in items[s:s + per_batch]]
                enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
                enc = {k: v.to(next(head.parameters()).device) for k, v in enc.items()}
                preds += head(**enc).logits.argmax(-1).tolist()
                bar.advance(len(texts))
        pairs = list(zip(truth, preds))
        hits = [float(y == p) for y, p in pairs]
        confusion = [[sum(1 for y, p in pairs if y == a and p == b) for b in range(len(names))]
                     for a in range(len(names))]
        metrics = {
            "acc": Metric(mean(hits), mean_stderr(hits), True, hits, scale=1.0),
            "macro_f1": Metric(macro_f1(pairs, len(names)),
                               bootstrap_stderr(lambda xs: macro_f1(xs, len(names)), pairs,
                                                cfg.bootstrap, cfg.seed), scale=1.0),
        }
        details = {"items": len(items), "labels": names, "confusion": confusion,
                   "predictions": preds}
        return TaskResult(metrics, details, time.perf_counter() - t0)
