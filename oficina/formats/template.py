"""Chat templates from outside: Hugging Face Jinja templates, and Ollama's Go templates.

Templates are untrusted code. Jinja ones are rendered here, in a Jinja ``ImmutableSandboxedEnvironment``
set up exactly as transformers' ``apply_chat_template`` sets up its own (so the prompt is the
same), with budgets that sandbox lacks: a template that loops for hours (nested ``range(100000)``)
is stopped after ``TIME_BUDGET_S``, and one that builds a huge value in a single C call
(``10 ** (10 ** 10)``, ``'a' * 10 ** 12``, doubling a string with ``~``) is refused by size
before the call; the output is capped at ``MAX_OUTPUT_CHARS``. Ollama Modelfile TEMPLATEs are Go
``text/template``; the common subset Ollama's own library uses is translated to Jinja
(variables ``.System .Prompt .Response .Messages .Role .Content``, ``$var``, ``if/else
if/else/end``, ``range`` with or without ``$i, $m :=``, ``eq ne not and or len``); anything else
(``printf``, ``index``, ``call``, ``template``...) is refused with a clear message rather than
rendered wrongly.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import threading
import time
from typing import Sequence

from ..errors import FormatError

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
# An action that only Go's text/template reads: a field (.X), a variable ($x), a keyword, or one
# of its builtin functions (text/template "Functions") called Go's way, by prefix.
_GO_HINT = re.compile(r"\{\{-?\s*(\.|\$|(if|range|with|define|template|block|end|else|break|continue|"
                      r"call|index|slice|printf|print|println|len|html|js|urlquery|and|or|not|"
                      r"eq|ne|lt|le|gt|ge)\b)")
SENTINEL = "\x00RESPONSE\x00"


def is_go_template(template: str) -> bool:
    return bool(_GO_HINT.search(template)) and "{%" not in template


TOP_FIELDS = ("System", "Prompt", "Response", "Messages")


def _expr(tokens: list[str], ctx: str) -> str:
    """Translate a Go pipeline (prefix function calls) to a Jinja expression. ``ctx``: what the
    dot is, "top" or the Jinja name of the current ``range`` element."""
    def atom(t: str) -> str:
        if t.startswith('"') or t.isdigit():
            return t
        if t in ("true", "false"):
            return t
        m = re.fullmatch(r"\$?\.(\w+)", t) or re.fullmatch(r"\$(\w+)\.(\w+)", t)
        if m and t.startswith("$") and not t.startswith("$."):
            return f"{_var(m.group(1))}.{m.group(2).lower()}"
        if m:
            field = m.group(1)
            if t.startswith("$.") or ctx == "top" or field in TOP_FIELDS:
                return field.lower()
            return f"{ctx}.{field.lower()}"
        if re.fullmatch(r"\$\w+", t):
            return _var(t[1:])
        raise FormatError(f"TEMPLATE: cannot translate Go template term {t!r}; "
                          f"write the TEMPLATE as a Jinja chat template instead")

    if not tokens:
        raise FormatError("TEMPLATE: empty action {{ }}")
    head, args = tokens[0], tokens[1:]
    ops = {"eq": "==", "ne": "!="}
    if head in ops and len(args) == 2:
        return f"({atom(args[0])} {ops[head]} {atom(args[1])})"
    if head in ("and", "or") and args:
        return "(" + f" {head} ".join(atom(a) for a in args) + ")"
    if head == "not" and len(args) == 1:
        return f"(not {atom(args[0])})"
    if head == "len" and len(args) == 1:
        return f"({atom(args[0])} | length)"
    if args:
        raise FormatError(f"TEMPLATE: cannot translate Go template function {head!r}; "
                          f"write the TEMPLATE as a Jinja chat template instead")
    return atom(head)


def _var(name: str) -> str:
    """A Go variable's Jinja name: prefixed, so that ``$messages`` or ``$loop`` cannot shadow
    the template's own names."""
    return f"go_{name}"


def go_to_jinja(template: str) -> str:
    """Translate an Ollama (Go text/template) TEMPLATE into an equivalent Jinja template.

    Go keeps all text verbatim except where ``{{-`` / ``-}}`` trim spaces; Jinja (as configured
    by transformers: trim_blocks, lstrip_blocks, no trailing newline) does not. So the trimming is
    done here and every piece of text becomes a Jinja string expression, which no Jinja whitespace
    rule touches.
    """
    out, stack, ctx = [], [], ["top"]
    actions = list(_ACTION.finditer(template))
    pos = 0
    for i, m in enumerate(actions + [None]):
        text = template[pos: m.start() if m else len(template)]
        if i > 0 and actions[i - 1].group(3):
            text = text.lstrip()
        if m is not None and m.group(1):
            text = text.rstrip()
        if text:
            out.append("{{ " + json.dumps(text) + " }}")
        if m is None:
            break
        pos = m.end()
        body = m.group(2)
        tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[^\s()]+', body)
        word = tokens[0] if tokens else ""
        if body.startswith("/*"):
            continue
        if word == "if":
            stack.append("if")
            out.append(f"{{% if {_expr(tokens[1:], ctx[-1])} %}}")
        elif word == "else" and tokens[1:2] == ["if"]:
            out.append(f"{{% elif {_expr(tokens[2:], ctx[-1])} %}}")
        elif word == "else":
            out.append("{% else %}")
        elif word == "range":
            # range .Messages | range $m := .Messages | range $i, $m := .Messages (Go: the
            # element is both $m and the dot inside the block)
            rest, index, element = tokens[1:], None, "message"
            if ":=" in rest:
                names = [n for t in rest[: rest.index(":=")] for n in t.split(",") if n]
                rest = rest[rest.index(":=") + 1:]
                if not 1 <= len(names) <= 2 or not all(re.fullmatch(r"\$\w+", n) for n in names):
                    raise FormatError(f"TEMPLATE: cannot translate `{{{{ {body} }}}}`")
                element = _var(names[-1][1:])
                index = _var(names[0][1:]) if len(names) == 2 else None
            if rest not in (["$.Messages"], [".Messages"]):
                raise FormatError("TEMPLATE: only `range .Messages` can be translated")
            stack.append("for")
            ctx.append(element)
            out.append(f"{{% for {element} in messages %}}")
            if index:
                out.append(f"{{% set {index} = loop.index0 %}}")
        elif word == "end":
            if not stack:
                raise FormatError("TEMPLATE: {{ end }} without an open if/range")
            kind = stack.pop()
            if kind == "for":
                ctx.pop()
            out.append(f"{{% end{kind} %}}")
        else:
            out.append(f"{{{{ {_expr(tokens, ctx[-1])} }}}}")
    if stack:
        raise FormatError(f"TEMPLATE: {len(stack)} if/range block(s) not closed with {{{{ end }}}}")
    return "".join(out)


# Budgets for rendering one prompt. A real chat template renders in milliseconds and its output
# is at most a context window of text (a 1M-token window is ~4M characters); an untrusted one can
# loop for hours (nested ``range(100000)``) or build a huge value (``10**10**10``, ``'a' * 10**12``).
TIME_BUDGET_S = 2.0
MAX_OUTPUT_CHARS = 4_000_000
_MAX_INT_BITS = 1 << 16  # far beyond any count or id a template needs


class _OutOfTime(BaseException):
    """Raised asynchronously in the rendering thread; a BaseException so that no ``except
    Exception`` inside Jinja's runtime can swallow it."""


def _too_big(what: str) -> FormatError:
    return FormatError(f"chat template refused: {what} is over the rendering budget "
                       f"({MAX_OUTPUT_CHARS:,} characters)")


def _size(value) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


@functools.cache
def _environment():
    """A Jinja sandbox set up as transformers' ``apply_chat_template`` sets up its own (same
    filters, globals and extensions, taken from its environment, so prompts are identical), plus
    size checks on the operations that can build huge values in one C call: ``**``, ``*``, ``+``
    and ``~`` (Jinja's sandbox lets these through; its ``range`` is already capped at 100,000)."""
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils.chat_template_utils import _compile_jinja_template

    class Generator(CodeGenerator):
        def visit_Concat(self, node, frame):  # `a ~ b`: route through the size check
            self.write("environment.checked_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class Budgeted(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"**", "*", "+"})
        code_generator_class = Generator

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
                if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > _MAX_INT_BITS:
                    raise _too_big(f"{left} ** {right}")
            elif operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if _size(seq) is not None and isinstance(n, int) and _size(seq) * n > MAX_OUTPUT_CHARS:
                        raise _too_big(f"repeating a value {n} times")
                if isinstance(left, int) and isinstance(right, int) and \
                        left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                    raise _too_big("an integer product")
            elif operator == "+" and _size(left) is not None and _size(right) is not None:
                if _size(left) + _size(right) > MAX_OUTPUT_CHARS:
                    raise _too_big("a concatenation")
            return super().call_binop(context, operator, left, right)

        def checked_concat(self, parts):
            text = "".join(map(str, parts))
            if len(text) > MAX_OUTPUT_CHARS:
                raise _too_big("a concatenation")
            return text

        def call(__self, __context, __obj, *args, **kwargs):  # Jinja's own signature
            # str.ljust/center/zfill... and the center/indent filters pad to a width in one call
            if any(isinstance(a, int) and a > MAX_OUTPUT_CHARS for a in (*args, *kwargs.values())):
                raise _too_big(f"a width of {max(a for a in (*args, *kwargs.values()) if isinstance(a, int)):,}")
            return super().call(__context, __obj, *args, **kwargs)

    reference = _compile_jinja_template("").environment
    env = Budgeted(trim_blocks=True, lstrip_blocks=True,
                   extensions=[type(e) for e in reference.extensions.values()])
    env.filters.update(reference.filters)
    env.globals.update(reference.globals)
    for name in ("center", "indent", "wordwrap"):  # filters are not routed through call()
        env.filters[name] = _width_checked(env.filters[name])
    return env


def _width_checked(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        if any(isinstance(a, int) and a > MAX_OUTPUT_CHARS for a in (*args, *kwargs.values())):
            raise _too_big("a filter width")
        return f(*args, **kwargs)
    return wrapper


@functools.lru_cache(maxsize=32)
def compile_template(template: str):
    """The compiled Jinja template; FormatError (with the template's line) if it does not parse."""
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(template)
    except TemplateSyntaxError as e:
        raise FormatError(f"chat template line {e.lineno}: {e.message}") from None


class _Watchdog:
    """One daemon thread that interrupts a rendering thread past its deadline with _OutOfTime.
    Pure-Python loops (which is what Jinja compiles ``for`` into) see the exception at their next
    bytecode; the single C calls that could run long are refused by size above. One thread for
    all renders, because starting a timer thread per render cost more than the render itself."""

    def __init__(self):
        self._cond = threading.Condition()
        self._jobs: dict[object, tuple[float, int]] = {}  # token -> (deadline, thread id)
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> object:
        token = object()
        with self._cond:
            self._jobs[token] = (time.monotonic() + seconds, threading.get_ident())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="oficina-template-watchdog", daemon=True)
                self._thread.start()
            if seconds < TIME_BUDGET_S:  # the thread never sleeps longer than the full budget
                self._cond.notify()
        return token

    def disarm(self, token: object) -> None:
        with self._cond:  # after this, the token can no longer fire
            self._jobs.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (due, thread) in list(self._jobs.items()):
                    if due <= now:
                        del self._jobs[token]
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(_OutOfTime))
                wake = min((due for due, _ in self._jobs.values()), default=now + TIME_BUDGET_S)
                self._cond.wait(max(wake - now, 0.001))


_WATCHDOG = _Watchdog()
# a forked child (a DataLoader worker) has the object but not the thread: start afresh there
os.register_at_fork(after_in_child=lambda: _WATCHDOG.__init__())


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise FormatError in this thread if the block runs longer than ``seconds``."""
    try:
        token = _WATCHDOG.arm(seconds)
        try:
            yield
        finally:
            _WATCHDOG.disarm(token)
    except _OutOfTime:
        raise FormatError(f"chat template did not finish rendering within {seconds:g} s "
                          f"(it loops too long); not rendered") from None


def render_jinja(template: str, messages: Sequence[dict], tokenizer, **variables) -> str:
    """``template`` rendered for ``messages`` with the variables transformers' apply_chat_template
    passes (special tokens, ``add_generation_prompt``), within the time and size budgets."""
    from transformers.utils.chat_template_utils import _plain_template_data

    compiled = compile_template(template)
    context = {**tokenizer.special_tokens_map, "tools": None, "documents": None,
               "add_generation_prompt": True, **variables,
               "messages": _plain_template_data([dict(m) for m in messages])}
    out, size = [], 0
    with _deadline(TIME_BUDGET_S):
        for piece in compiled.generate(**context):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise _too_big("the rendered prompt")
            out.append(piece)
    return "".join(out)


def render_chat(template: str, messages: Sequence[dict], tokenizer, tools: Sequence[dict] | None = None,
                generation_prompt: bool = True) -> str:
    """The prompt text for ``messages``, ready for the assistant's next answer (without
    ``generation_prompt``: the conversation as it stands, its last turn closed, as training
    needs it). ``tools`` (OpenAI-style function definitions) reach Jinja templates that use them,
    as in transformers. ``formats.prompt.build`` is the caller that adds the model's parts."""
    try:
        if is_go_template(template):
            return _render_go(template, messages, tokenizer, generation_prompt)
        return render_jinja(template, messages, tokenizer, tools=list(tools) if tools else None,
                            add_generation_prompt=generation_prompt)
    except FormatError:
        raise
    except RecursionError:
        raise FormatError("chat template recursed too deeply; not rendered") from None
    except MemoryError:
        raise _too_big("a value it built") from None
    except Exception as e:  # jinja2 TemplateError and friends from untrusted templates
        raise FormatError(f"chat template failed to render: {str(e).splitlines()[0] if str(e) else e!r}") from None


def _render_go(template: str, messages: Sequence[dict], tokenizer, generation_prompt: bool = True) -> str:
    jinja = go_to_jinja(template)

    def render(**variables) -> str:
        return render_jinja(jinja, variables.pop("messages"), tokenizer, **variables)

    if "messages" in jinja:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        text = render(messages=list(messages), system=system, prompt=last_user, response="")
        # Go templates have no add_generation_prompt: what one writes after every conversation
        # (its text for no messages, e.g. `<|im_start|>assistant\n`) is the generation prompt
        tail = "" if generation_prompt else render(messages=[], system="", prompt="", response="")
        return text[:-len(tail)] if tail and text.endswith(tail) else text
    # Legacy Prompt/Response templates: Ollama renders one turn at a time and, for the last
    # turn, cuts the output where .Response would go.
    system = "".join(m["content"] for m in messages if m["role"] == "system")
    turns, pending = [], None
    for m in messages:
        if m["role"] == "user":
            if pending is not None:
                turns.append((pending, ""))
            pending = m["content"]
        elif m["role"] == "assistant":
            turns.append((pending or "", m["content"]))
            pending = None
    if generation_prompt or pending is not None:
        turns.append((pending or "", SENTINEL))
    parts = []
    for i, (prompt, response) in enumerate(turns):
        text = render(messages=list(messages), system=system if i == 0 else "",
                      prompt=prompt, response=response)
        parts.append(text.split(SENTINEL)[0] if response == SENTINEL else text)
    return "".join(parts)
