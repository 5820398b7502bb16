"""The Python API, the same functions the CLI calls::

    import oficina
    m = oficina.load("smollm2")
    m.generate("Why is the sky blue?", temperature=0)
    m.chat([{"role": "user", "content": "Hi"}])

Re-exports only; the code lives in ``generation/session.py``. No module below the CLI imports
this one.
"""

from .generation.session import END_OF_TURN, Message, Model, load, resolve  # noqa: F401
from .generation.session import _plain_transcript  # noqa: F401  (tuning.tasks, until it moves)
