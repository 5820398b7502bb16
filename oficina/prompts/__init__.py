"""The prompt library: named, versioned prompts with declared variables, examples and tests::

    from oficina.prompts import PromptStore, read
    store = PromptStore()
    p, new = store.add("translate", read("prompt.yaml"))
    store.label("translate", "production", p.version)
    text = store.get("translate:production").render({"text": "Good morning"})

``spec.py`` is the file format and the sandboxed rendering, ``store.py`` the SQLite store,
``testing.py`` runs a prompt's examples against a model.
"""

from .spec import PromptError, PromptSpec, parse, read
from .store import PromptStore, StoredPrompt
from .testing import TestReport, test_prompt

__all__ = ["PromptError", "PromptSpec", "PromptStore", "StoredPrompt", "TestReport", "parse",
           "read", "test_prompt"]
