"""The Python API, the same functions the CLI calls::

    import oficina
    m = oficina.load("smollm2")
    m.generate("Why is the sky blue?", temperature=0)
    m.chat([{"role": "user", "content": "Hi"}])
    oficina.check("call +351 912 345 678", "pii").redacted       # guards (oficina.safety)
    oficina.load("smollm2", guard=["pii", "content"])           # guards on a model's stream
    oficina.PromptStore().get("translate:production").render({"text": "Hi"})

Re-exports only; the code lives in ``generation/session.py``, ``safety/`` and ``prompts/``. No
module below the CLI imports this one.
"""

from . import rag  # noqa: F401  (retrieval; models bound to a collection answer through it)
from .generation.result import Reply, Stream  # noqa: F401  (what generate/chat and stream return)
from .generation.session import END_OF_TURN, Message, Model, load, resolve  # noqa: F401
from .prompts import PromptStore  # noqa: F401  (the prompt library)
from .safety import check, get_guard  # noqa: F401  (guards)
from .safety.redteam import redteam  # noqa: F401  (the red-team suite)
