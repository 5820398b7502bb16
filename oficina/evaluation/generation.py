"""``gen``: generation tasks, ``{"prompt", "reference"}`` per line (``reference`` may be a list
of acceptable answers). The model answers each prompt through its chat template, as
``oficina run`` would, with the sampling ``Options`` recorded in the result.

Scores, on the usual scales of their reference implementations: BLEU and chrF (0-100) from
sacrebleu's corpus scorers (Post 2018, "A Call for Clarity in Reporting BLEU Scores"), ROUGE-1/2/L
F-measure (0-1) from Google's rouge-score with stemming, averaged over items (best reference per
item, as ``score_multi``), and exact match (0-1) after SQuAD's answer normalisation (lower case,
no punctuation, no articles, single spaces; Rajpurkar et al. 2016, the official evaluate script).
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import OficinaError
from ..report import reporter
from .stats import bootstrap_stderr, mean, mean_stderr
from .tasks import EvalConfig, Kind, Metric, TaskResult, need_str, read_jsonl, register

# Greedy and short unless the user says otherwise: a reproducible, comparable run. No stop text:
# base models often open with a blank line, so the answer is cut out afterwards (``answer``).
DEFAULTS = {"temperature": 0, "num_predict": 48, "seed": 0}


@dataclass(frozen=True)
class Item:
    prompt: str
    references: tuple[str, ...]


def check_item(obj: dict, err) -> Item:
    prompt = need_str(obj, "prompt", err)
    ref = obj.get("reference")
    refs = [ref] if isinstance(ref, str) else ref
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise err("'reference' must be a non-empty string or a list of them")
    return Item(prompt, tuple(refs))


def answer(output: str) -> str:
    """The first non-empty paragraph of the output: what lm-eval's ``until: ["\\n\\n"]`` keeps,
    except that leading blank lines (a base model's usual opening) do not end the answer."""
    for block in re.split(r"\n\s*\n", output):
        if block.strip():
            return block.strip()
    return ""


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _libraries():
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise OficinaError(f"gen tasks need sacrebleu and rouge-score: pip install sacrebleu "
                           f"rouge-score ({e.name} is missing)") from None
    return sacrebleu, rouge_scorer


def corpus(metric, hyps: list[str], refs: list[tuple[str, ...]]) -> float:
    """A sacrebleu corpus score with a variable number of references per item: the reference
    streams are padded with each item's first reference, which changes neither BLEU's clipped
    counts nor its closest-length brevity penalty, nor chrF's best-reference choice."""
    n = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else r[0] for r in refs] for k in range(n)]
    return float(metric(hyps, streams).score)


@register
class Generation(Kind):
    name = "gen"
    title = "generation"
    builtin = "gen.jsonl"
    headline = ("bleu", "rougeL")

    def load(self, path: Path) -> list[Item]:
        return read_jsonl(path, check_item)

    def run(self, model, items: list[Item], cfg: EvalConfig, label: str) -> TaskResult:
        sacrebleu, rouge_scorer = _libraries()
        t0 = time.perf_counter()
        opts = model.options.merged({**DEFAULTS, **cfg.options})
        raw = []
        with reporter().progress(f"{label} · gen · {len(items)} prompts", len(items)) as bar:
            for it in items:
                raw.append(model.generate(it.prompt, **opts.to_dict()))
                bar.advance()
        hyps = [answer(r) for r in raw]
        refs = [it.references for it in items]
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        rouge = [scorer.score_multi(list(r), h) for h, r in zip(hyps, refs)]
        em = [float(any(normalize(h) == normalize(x) for x in r)) for h, r in zip(hyps, refs)]
        pairs = list(zip(hyps, refs))

        def boot(metric):
            stat = lambda sample: corpus(metric, [h for h, _ in sample], [r for _, r in sample])
            return bootstrap_stderr(stat, pairs, cfg.bootstrap, cfg.seed)

        metrics = {
            "bleu": Metric(corpus(sacrebleu.corpus_bleu, hyps, refs), boot(sacrebleu.corpus_bleu),
                           scale=100.0),
            "chrf": Metric(corpus(sacrebleu.corpus_chrf, hyps, refs), boot(sacrebleu.corpus_chrf),
                           scale=100.0),
        }
        for key in ("rouge1", "rouge2", "rougeL"):
            xs = [r[key].fmeasure for r in rouge]
            metrics[key] = Metric(mean(xs), mean_stderr(xs), True, xs, scale=1.0)
        metrics["exact_match"] = Metric(mean(em), mean_stderr(em), True, em, scale=1.0)
        details = {"items": len(items), "options": opts.to_dict(),
                   "answer": "first non-empty paragraph of the output",
                   "sacrebleu": sacrebleu.__version__,
                   "outputs": [{"prompt": it.prompt, "output": r, "answer": h,
                                "reference": list(it.references)}
                               for it, h, r in zip(items, hyps, raw)]}
        return TaskResult(metrics, details, time.perf_counter() - t0)
