"""The one prompt builder: a conversation as the model sees it, for every caller — `run` and
`chat` (``generation.session.Model``), the server (which may override the template per request),
`tune`, DPO and reward training (``tuning.tasks``), and evaluation (through ``Model``).

The model's Modelfile parts join the conversation the way Ollama adds them: its SYSTEM when the
conversation has no system message, its MESSAGE lines before the conversation. The template is
the Modelfile TEMPLATE (Go or Jinja, ``formats.template``) when there is one, else the
tokenizer's own chat template, else the plain transcript below (base models). So training text
and inference prompt come from the same function: for a conversation ending in an assistant
answer, the training text is the inference prompt for the messages before it, then the answer,
then whatever the template writes to close the turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import FormatError
from .template import render_chat

Message = dict[str, Any]


@dataclass(frozen=True)
class Prompt:
    text: str
    templated: bool  # rendered by a chat template (which writes its own special tokens)
    # Character spans in ``text`` of each assistant turn: the answer and the template's end of
    # the turn (e.g. ``<|im_end|>``), which is what training labels so the model learns to stop.
    turns: tuple[tuple[int, int], ...] = ()
    answers: tuple[tuple[int, int], ...] = ()  # each answer's own text, exactly


def conversation(messages: Sequence[Message], system: str | None = None,
                 preamble: Sequence[Message] = ()) -> list[Message]:
    """``messages`` with the model's SYSTEM (when they have no system message) and its MESSAGE
    lines (``preamble``) before them."""
    msgs = list(messages)
    if system and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return list(preamble) + msgs


def plain_transcript(messages: Sequence[Message]) -> str:
    """For models without a chat template (base models): a plain transcript they can continue."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def build(messages: Sequence[Message], tokenizer, template: str | None = None, system: str | None = None,
          preamble: Sequence[Message] = (), tools: Sequence[dict] | None = None,
          train: bool = False, where: str | None = None) -> Prompt:
    """The prompt for ``messages``. ``template`` (a Modelfile TEMPLATE) wins over the
    tokenizer's chat template. Without ``train``: the text ready for the assistant's next answer.
    With ``train``: the text through the last assistant answer, and the span of every assistant
    turn; a template that does not render the conversation turn by turn (so answers cannot be
    located) is refused. Errors name ``where`` (a record's ``file:line``) when given."""
    msgs = conversation(messages, system, preamble)
    template = template or getattr(tokenizer, "chat_template", None)
    if not train:
        text = _render(template, msgs, tokenizer, tools, True, where) if template else plain_transcript(msgs)
        return Prompt(text, bool(template))
    text, turns, answers = "", [], []
    for k, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        if template:
            before = _render(template, msgs[:k], tokenizer, tools, True, where)
            after = _render(template, msgs[:k + 1], tokenizer, tools, False, where)
        else:
            before = plain_transcript(msgs[:k])
            after = plain_transcript(msgs[:k]) + " " + m["content"]
        if not after.startswith(before) or not before.startswith(text):
            raise FormatError(f"{where or 'conversation'}: the chat template does not render this conversation turn "
                              f"by turn, so the answers cannot be located; set train_on: all")
        turns.append((len(before), len(after)))
        start = after.find(m["content"], len(before))
        if start >= 0:  # a template may rewrite an answer (strip it, drop its reasoning)
            answers.append((start, start + len(m["content"])))
        text = after
    return Prompt(text, bool(template), tuple(turns), tuple(answers))


def _render(template, msgs: list[Message], tokenizer, tools, generation_prompt: bool, where: str | None) -> str:
    if isinstance(template, str):
        try:
            return render_chat(template, msgs, tokenizer, tools=tools, generation_prompt=generation_prompt)
        except FormatError as e:
            if where is None:
                raise
            raise FormatError(f"{where}: {e}") from None
    try:  # a tokenizer whose chat_template is not one string (named templates): its own renderer
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt,
                                             tools=list(tools) if tools else None)
    except Exception as e:  # template errors from an untrusted template: one line, with the record
        raise FormatError(f"{where}: chat template failed: {str(e).splitlines()[0] if str(e) else e!r}") from None
