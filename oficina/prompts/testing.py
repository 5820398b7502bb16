"""``oficina prompt test``: run a prompt's examples on a model, score each by its checks.

An example passes when every check passes; its score is the share of checks that pass; the
report's score is the mean over examples. Generation uses the prompt's ``parameters`` (the model's
own where the prompt sets none), with the chat template applied as ``oficina run`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..report import reporter
from .spec import run_check
from .store import StoredPrompt


@dataclass
class ExampleResult:
    vars: dict[str, str]
    answer: str
    checks: list[tuple[dict, bool]]

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.checks)

    @property
    def score(self) -> float:
        return sum(ok for _, ok in self.checks) / len(self.checks) if self.checks else 1.0


@dataclass
class TestReport:
    __test__ = False  # not a pytest class

    prompt: str
    model: str
    results: list[ExampleResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def score(self) -> float:
        return sum(r.score for r in self.results) / len(self.results) if self.results else 0.0

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "model": self.model, "passed": self.passed,
                "total": len(self.results), "score": self.score,
                "examples": [{"vars": r.vars, "answer": r.answer, "passed": r.passed, "score": r.score,
                              "checks": [{"check": c, "ok": ok} for c, ok in r.checks]}
                             for r in self.results]}


def test_prompt(prompt: StoredPrompt, model, **options) -> TestReport:
    """Run every example of ``prompt`` on a loaded ``oficina.api.Model``."""
    ref = model.entry.ref if model.entry else "model"
    report = TestReport(prompt.ref, ref)
    opts = {**prompt.spec.parameters, **options}
    with reporter().progress(f"testing {prompt.ref} on {ref}", len(prompt.spec.examples)) as bar:
        for ex in prompt.spec.examples:
            answer = model.generate(prompt.render(ex.vars), **opts)
            report.results.append(ExampleResult(ex.vars, answer, [(c, run_check(c, answer)) for c in ex.checks]))
            bar.advance()
    return report


test_prompt.__test__ = False  # a library function, not a pytest test
