"""Filters on prompts and answers (one interface, ``check(text, context) -> Verdict``), the
red-team runner and the grounding check::

    from oficina import safety
    safety.check("mail me at ana@example.pt", "pii").redacted   # 'mail me at [EMAIL]'
    oficina.load("smollm2", guard=["pii", "content"])           # guards on a model's stream

Guards by name: ``pii`` (pii.py), ``content`` and ``classifier=MODEL`` (classifier.py),
``rules=FILE`` (rules.py), ``grounding`` (grounding.py); the registry is in guard.py.
"""

from .guard import GUARDS, Guard, GuardError, Span, Verdict, check, get_guard, redact, register
from .stream import GuardedStream, check_input

__all__ = [
    "GUARDS",
    "Guard",
    "GuardError",
    "GuardedStream",
    "Span",
    "Verdict",
    "check",
    "check_input",
    "get_guard",
    "redact",
    "redteam",
    "register",
    "support",
]


def __getattr__(name):
    if name == "support":
        from .grounding import support

        return support
    if name == "redteam":
        from .redteam import redteam

        return redteam
    raise AttributeError(f"module 'oficina.safety' has no attribute {name!r}")
