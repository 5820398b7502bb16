"""Chat templates from outside: Hugging Face Jinja templates, and Ollama's Go templates.

Templates are untrusted. Jinja ones are rendered by transformers' ``apply_chat_template``, which
uses Jinja's ``ImmutableSandboxedEnvironment``. Ollama Modelfile TEMPLATEs are Go
``text/template``; the common subset Ollama's own library uses is translated to Jinja
(variables ``.System .Prompt .Response .Messages .Role .Content``, ``if/else if/else/end``,
``range``, ``eq ne not and or``); anything else is refused with a clear message rather than
rendered wrongly.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from ..errors import FormatError

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_GO_HINT = re.compile(r"\{\{-?\s*(\.|\$|if |range |end\b|else\b)")
SENTINEL = "\x00RESPONSE\x00"


def is_go_template(template: str) -> bool:
    return bool(_GO_HINT.search(template)) and "{%" not in template


def _expr(tokens: list[str], ctx: str) -> str:
    """Translate a Go pipeline (prefix function calls) to a Jinja expression."""
    def atom(t: str) -> str:
        if t.startswith('"') or t.isdigit():
            return t
        if t in ("true", "false"):
            return t
        m = re.fullmatch(r"\$?\.(\w+)", t) or re.fullmatch(r"\$(\w+)\.(\w+)", t)
        if m and t.startswith("$") and not t.startswith("$."):
            return f"{m.group(1)}.{m.group(2).lower()}"
        if m:
            field = m.group(1)
            if t.startswith("$.") or ctx == "top" or field in ("System", "Prompt", "Response", "Messages"):
                return field.lower()
            return f"message.{field.lower()}"
        if re.fullmatch(r"\$\w+", t):
            return t[1:]
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
            rest, index = tokens[1:], None
            if ":=" in rest:
                names = [t.strip(",") for t in rest[: rest.index(":=")]]
                rest = rest[rest.index(":=") + 1:]
                if len(names) == 2:
                    index = names[0][1:]
            if rest not in (["$.Messages"], [".Messages"]):
                raise FormatError("TEMPLATE: only `range .Messages` can be translated")
            stack.append("for")
            ctx.append("message")
            out.append("{% for message in messages %}")
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


def render_chat(template: str, messages: Sequence[dict], tokenizer, tools: Sequence[dict] | None = None) -> str:
    """The prompt text for ``messages``, ready for the assistant's next answer. ``tools``
    (OpenAI-style function definitions) reach Jinja templates that use them, as in transformers."""
    try:
        if is_go_template(template):
            return _render_go(template, messages, tokenizer)
        return tokenizer.apply_chat_template(list(messages), chat_template=template, tools=list(tools) if tools else None,
                                             add_generation_prompt=True, tokenize=False)
    except FormatError:
        raise
    except Exception as e:  # jinja2 TemplateError and friends from untrusted templates
        raise FormatError(f"chat template failed to render: {str(e).splitlines()[0] if str(e) else e!r}") from None


def _render_go(template: str, messages: Sequence[dict], tokenizer) -> str:
    jinja = go_to_jinja(template)

    def render(**variables) -> str:
        # The template is rendered through transformers' sandbox with our extra variables.
        return tokenizer.apply_chat_template(
            variables.pop("messages"), chat_template=jinja, tokenize=False,
            add_generation_prompt=True, **variables)

    if "messages" in jinja:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return render(messages=list(messages), system=system, prompt=last_user, response="")
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
    turns.append((pending or "", SENTINEL))
    parts = []
    for i, (prompt, response) in enumerate(turns):
        text = render(messages=list(messages), system=system if i == 0 else "",
                      prompt=prompt, response=response)
        parts.append(text.split(SENTINEL)[0] if response == SENTINEL else text)
    return "".join(parts)
