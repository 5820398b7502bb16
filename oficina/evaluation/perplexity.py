"""``ppl``: perplexity of a text file (one document) or JSONL (``{"text": ...}`` per line, each
document scored on its own, as lm-eval's ``loglikelihood_rolling`` does).

Reported as lm-eval's wikitext task does (lm_eval/tasks/wikitext): token perplexity, word
perplexity and bits per byte. Bits per byte divides the total negative log-likelihood by the
UTF-8 size of the text, so it does not depend on the tokenizer: the fair number when the
models being compared tokenize differently.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from ..errors import FormatError
from .scoring import Scorer
from .tasks import EvalConfig, Kind, Metric, TaskResult, need_str, read_jsonl, register


@register
class Perplexity(Kind):
    name = "ppl"
    title = "perplexity"
    builtin = "heldout.txt"
    headline = ("ppl", "bits_per_byte")

    def load(self, path: Path) -> list[str]:
        if path.suffix.lower() in (".jsonl", ".json"):
            return read_jsonl(path, lambda obj, err: need_str(obj, "text", err))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not text.strip():
            raise FormatError(f"{path}: empty text")
        return [text]

    def run(self, model, items: list[str], cfg: EvalConfig, label: str) -> TaskResult:
        t0 = time.perf_counter()
        scorer = Scorer(model, cfg.window)
        stride = min(cfg.stride or scorer.window, scorer.window)
        requests, owner = [], []
        for d, text in enumerate(items):
            windows = scorer.rolling(text, stride)
            requests += windows
            owner += [d] * len(windows)
        scored = scorer(requests, f"{label} · ppl · {len(requests)} windows")
        nll = [0.0] * len(items)
        for d, s in zip(owner, scored):
            nll[d] -= s.logprob
        total = sum(nll)
        tokens = sum(s.tokens for s in scored)
        nbytes = sum(len(t.encode("utf-8")) for t in items)
        words = sum(len(re.split(r"\s+", t.strip())) for t in items)  # lm-eval's word count
        metrics = {
            "ppl": Metric(math.exp(total / tokens), higher_is_better=False),
            "bits_per_byte": Metric(total / nbytes / math.log(2), higher_is_better=False),
            "word_ppl": Metric(math.exp(total / words), higher_is_better=False),
            "nll_per_token": Metric(total / tokens, higher_is_better=False),
        }
        details = {"documents": len(items), "tokens": tokens, "bytes": nbytes, "words": words,
                   "windows": len(requests), "window": scorer.window, "stride": stride,
                   "convention": "lm-eval loglikelihood_rolling (disjoint windows"
                                 + (")" if stride == scorer.window else f", stride {stride})")}
        return TaskResult(metrics, details, time.perf_counter() - t0)
