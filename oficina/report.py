"""The one way library code talks to a person: progress bars, warnings and notes on stderr.

Nothing below ``cli.py`` prints; it calls ``reporter()``, which is per context (a
``contextvars.ContextVar``): the CLI installs one for its command, the server one per request, a
test a quiet one that records; code with none installed gets the process default. A reporter
remembers its last ``keep`` messages, never more.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections import deque
from contextvars import ContextVar
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Task:
    def __init__(self, progress: Progress | None, task_id: int | None):
        self._p, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._id, n)

    def update(self, **kw) -> None:
        if self._p is not None:
            self._p.update(self._id, **kw)


class Reporter:
    def __init__(self, console: Console | None = None, quiet: bool = False, keep: int = 1000):
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.messages: deque[tuple[str, str]] = deque(maxlen=keep)  # (kind, text), the last ``keep``

    def child(self) -> "Reporter":
        """A reporter of its own (for one request) that prints where this one prints."""
        return Reporter(self.console, self.quiet, self.messages.maxlen or 1000)

    def warn(self, message: str) -> None:
        self.messages.append(("warning", message))
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/] {message}", markup=True, soft_wrap=True)

    def note(self, message: str) -> None:
        self.messages.append(("note", message))
        if not self.quiet:
            self.console.print(message, markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None, unit: str = "items") -> Iterator[Task]:
        """A progress bar; ``unit="bytes"`` shows sizes and speed. Invisible when not a TTY."""
        if self.quiet or not self.console.is_terminal:
            yield Task(None, None)
            return
        columns = [TextColumn("{task.description}"), BarColumn()]
        if unit == "bytes":
            columns += [DownloadColumn(), TransferSpeedColumn()]
        else:
            columns += [MofNCompleteColumn()]
        columns.append(TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as p:
            yield Task(p, p.add_task(description, total=total))


_DEFAULT = Reporter()
_current: ContextVar[Reporter | None] = ContextVar("oficina_reporter", default=None)


def reporter() -> Reporter:
    """This context's reporter (the process default where none was installed)."""
    r = _current.get()
    return _DEFAULT if r is None else r


def set_reporter(r: Reporter) -> Reporter:
    """Install ``r`` for the current context (a thread, an asyncio task and the tasks it starts);
    returns the one it replaces."""
    previous = reporter()
    _current.set(r)
    return previous


@contextlib.contextmanager
def command_scope() -> Iterator[Reporter]:
    """The reporter of one CLI command: the one installed around it (a test's), else a new one
    that prints where the default prints, so a long-lived process keeps no command's messages."""
    with reporting(_current.get() or _DEFAULT.child()) as r:
        yield r


@contextlib.contextmanager
def reporting(r: Reporter) -> Iterator[Reporter]:
    """``r`` for the block, then the previous one again."""
    token = _current.set(r)
    try:
        yield r
    finally:
        _current.reset(token)


def is_interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


# Deprecations inside other libraries' own calls (peft passing transformers' old names), which
# oficina cannot fix at the source; its own calls use the new names (``models.compat``).
LIBRARY_DEPRECATIONS = (r"`past_key_values` is deprecated", r"`is_gradient_checkpointing` is deprecated")


def quiet_libraries(everything: bool = False) -> None:
    """Keep other libraries' warnings out of the user's output. The CLI (``everything``) owns
    the process and drops every Python warning, since oficina's own go through ``reporter()``;
    the Python API shares its process with the user's code, so it drops only the ones above.
    ``PYTHONWARNINGS``/``-W`` or ``OFICINA_DEBUG=1`` keep them all."""
    if sys.warnoptions or os.environ.get("OFICINA_DEBUG"):
        return
    if everything:
        warnings.simplefilter("ignore")
        return
    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
