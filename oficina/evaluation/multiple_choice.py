"""``mc``: multiple choice in the MMLU / ARC / HellaSwag style, ``{"question", "choices",
"answer"}`` per line (``answer`` is the index of the right choice).

Each choice is scored by its log-likelihood after the prompt and the highest wins, as in
lm-evaluation-harness's ``output_type: multiple_choice`` (lm_eval/api/task.py
``process_results``): ``acc`` on the summed log-likelihood, ``acc_norm`` on log-likelihood
divided by the choice's length in characters. Prompt styles are lm-eval's:

* ``cloze`` (ARC, lm_eval/tasks/arc): ``Question: {q}\\nAnswer:`` + `` {choice}``
* ``letters`` (MMLU, lm_eval/tasks/mmlu): ``{q}\\nA. ..\\nB. ..\\nAnswer:`` + `` A``
* ``plain`` (HellaSwag, lm_eval/tasks/hellaswag): ``{q}`` + `` {choice}``

Few-shot examples come from the same file (never the item itself), sampled with lm-eval's
default seed, answered, and joined with its ``fewshot_delimiter`` "\\n\\n".
"""

from __future__ import annotations

import random
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import OficinaError
from .scoring import Scorer
from .stats import mean, mean_stderr
from .tasks import EvalConfig, Kind, Metric, TaskResult, need_choices, need_str, read_jsonl, register

FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Item:
    question: str
    choices: tuple[str, ...]
    answer: int
    popular: int | None = None  # truthfulness probe: the popular false answer


@dataclass(frozen=True)
class Style:
    prompt: Callable[[Item], str]           # the context, ending before the answer
    targets: Callable[[Item], list[str]]    # what is scored after it, one per choice


def _letters(it: Item) -> str:
    opts = "".join(f"\n{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(it.choices))
    return f"{it.question.strip()}{opts}\nAnswer:"


STYLES: dict[str, Style] = {
    "cloze": Style(lambda it: f"Question: {it.question.strip()}\nAnswer:", lambda it: list(it.choices)),
    "letters": Style(_letters, lambda it: list(string.ascii_uppercase[:len(it.choices)])),
    "plain": Style(lambda it: it.question.strip(), lambda it: list(it.choices)),
}


def check_item(obj: dict, err) -> Item:
    question = need_str(obj, "question", err)
    choices, answer = need_choices(obj, err)
    if len(choices) > 26:
        raise err(f"at most 26 choices, got {len(choices)}")
    return Item(question, tuple(choices), answer)


def fewshot(items: list[Item], i: int, k: int, seed: int) -> list[Item]:
    """``k`` examples for item ``i``, the same ones on every run and for every model."""
    if k == 0:
        return []
    pool = [j for j in range(len(items)) if j != i]
    if k > len(pool):
        raise OficinaError(f"{k} shots asked but the file has only {len(pool)} other items")
    return [items[j] for j in random.Random(seed + i).sample(pool, k)]


def requests(scorer: Scorer, items: list[Item], style: Style, cfg: EvalConfig,
             preamble: str = "") -> tuple[list, list[int]]:
    """One (context, continuation) request per choice of every item, and where each item starts."""
    reqs, starts = [], []
    for i, it in enumerate(items):
        shots = [style.prompt(s) + TARGET_DELIMITER + style.targets(s)[s.answer]
                 for s in fewshot(items, i, cfg.shots, cfg.seed)]
        context = preamble + FEWSHOT_DELIMITER.join(shots + [style.prompt(it)])
        starts.append(len(reqs))
        reqs += [scorer.pair(context, TARGET_DELIMITER + t) for t in style.targets(it)]
    return reqs, starts


def choose(items: list[Item], style: Style, scored, starts: list[int]) -> tuple[list[int], list[int]]:
    """Predicted choice per item by plain and by length-normalized log-likelihood."""
    pred, pred_norm = [], []
    for it, s in zip(items, starts):
        lls = [x.logprob for x in scored[s:s + len(it.choices)]]
        lens = [float(len(t)) for t in style.targets(it)]  # lm-eval: len(choice) in characters
        pred.append(max(range(len(lls)), key=lambda j: lls[j]))
        pred_norm.append(max(range(len(lls)), key=lambda j: lls[j] / lens[j]))
    return pred, pred_norm


def accuracy(hits: list[float]) -> Metric:
    return Metric(mean(hits), mean_stderr(hits), True, hits, scale=1.0)


@register
class MultipleChoice(Kind):
    name = "mc"
    title = "multiple choice"
    builtin = "mc.jsonl"
    headline = ("acc", "acc_norm")

    def load(self, path: Path) -> list[Item]:
        return read_jsonl(path, check_item)

    def run(self, model, items: list[Item], cfg: EvalConfig, label: str) -> TaskResult:
        t0 = time.perf_counter()
        if cfg.mc_style not in STYLES:
            raise OficinaError(f"unknown multiple-choice style {cfg.mc_style!r}; styles: {', '.join(STYLES)}")
        style = STYLES[cfg.mc_style]
        scorer = Scorer(model, cfg.window)
        reqs, starts = requests(scorer, items, style, cfg)
        scored = scorer(reqs, f"{label} · mc · {len(items)} items")
        pred, pred_norm = choose(items, style, scored, starts)
        metrics = {
            "acc": accuracy([float(p == it.answer) for p, it in zip(pred, items)]),
            "acc_norm": accuracy([float(p == it.answer) for p, it in zip(pred_norm, items)]),
        }
        chance = mean([1 / len(it.choices) for it in items])
        details = {"items": len(items), "shots": cfg.shots, "style": cfg.mc_style,
                   "chance": chance, "requests": len(reqs), "predictions": pred}
        return TaskResult(metrics, details, time.perf_counter() - t0)
