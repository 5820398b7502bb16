"""The web UI: static pages (``static/``, plain ES modules, no build step) and the few native
routes they need that Ollama's API lacks (``routes.py``). The server registers ``routes.ROUTES``
in its one route table; the pages call the same HTTP API any client uses."""

from pathlib import Path

STATIC = Path(__file__).parent / "static"
