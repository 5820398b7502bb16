"""Evaluation: perplexity, generation (BLEU/chrF/ROUGE/exact match), classification, multiple
choice and a truthfulness probe, for one model or several side by side::

    from oficina.evaluation import EvalConfig, evaluate, parse_tasks
    report = evaluate(["smollm2", "gemma3:270m"], parse_tasks("ppl,mc"), EvalConfig())
    report.save("eval.json")

Each task kind is a module that registers itself in ``tasks.KINDS`` under its prefix.
"""

# Imported for their registration, in the order the kinds are listed to users.
from . import perplexity, generation, multiple_choice, classification, truthful  # noqa: F401, I001
from .compare import Report, evaluate, run_tasks, save_metrics
from .scoring import Scorer, rolling_windows
from .tasks import KINDS, EvalConfig, Metric, TaskResult, TaskSpec, parse_tasks

__all__ = ["KINDS", "EvalConfig", "Metric", "Report", "Scorer", "TaskResult", "TaskSpec",
           "evaluate", "parse_tasks", "rolling_windows", "run_tasks", "save_metrics"]
