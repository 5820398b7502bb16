"""Batched log-likelihood of continuations: the one scoring core behind perplexity, multiple
choice and the truthfulness probe.

Conventions are lm-evaluation-harness's HFLM, so our numbers compare with published ones:

* a request is (context ids, continuation ids); the continuation's log-probability is summed,
  and ``greedy`` says whether argmax decoding would have produced it
  (lm_eval/models/huggingface.py ``_loglikelihood_tokens``);
* strings become a pair by encoding context and context+continuation and splitting, with the
  context's trailing spaces moved into the continuation; an empty context becomes the prefix
  token, BOS or else EOS (lm_eval/api/model.py ``_encode_pair``, ``loglikelihood``);
* a too-long request keeps its last ``window + 1`` tokens (truncation from the left);
* perplexity windows are lm-eval's ``get_rolling_token_windows`` + ``make_disjoint_window``
  (lm_eval/utils.py) with ``context_len = window - stride + 1``: stride = window (the default) is
  exactly lm-eval's ``loglikelihood_rolling``; a smaller stride gives each scored token at least
  ``window - stride`` tokens of context, as in Hugging Face's "perplexity of fixed-length models".

Where we differ, on purpose (the first two change the work, not the numbers):

* scoring goes through the model's runner (``generation/runner.py``, ``Runner.score``): the fast
  decoder over packed weights where the model allows, transformers otherwise, one sequence at a
  time in chunks of ``num_batch`` with logits only for the scored positions (lm-eval pads
  batches and keeps [B, T, V] logits);
* requests that share a context (the choices of one question) are scored one after another, so
  the runner's prefix reuse runs that context once and copies its KV for every choice, where
  lm-eval runs the whole context again for every choice;
* rolling texts are encoded without the tokenizer's own special tokens (lm-eval's HFLM scores
  P(<bos> | <bos>) for tokenizers that add BOS, e.g. Gemma).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..report import reporter

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)

DEFAULT_WINDOW = 2048        # lm-eval's default max length when a config names none


@dataclass
class Scored:
    logprob: float   # sum of log P(continuation token | everything before), natural log
    greedy: bool     # every continuation token was the argmax
    tokens: int      # continuation length


class Scorer:
    """Scores requests against one loaded causal LM (an ``oficina.api.Model``) through its runner."""

    def __init__(self, model, window: int | None = None):
        self.runner = model.runner
        self.tokenizer = model.tokenizer
        tok = self.tokenizer
        self.prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if self.prefix is None:
            self.prefix = tok.pad_token_id if tok.pad_token_id is not None else 0
        ctx = min(model.info.context_length or DEFAULT_WINDOW, self.runner.context_length or DEFAULT_WINDOW)
        self.window = min(window or min(ctx, DEFAULT_WINDOW), ctx)

    # -- strings -> requests ----------------------------------------------------------------------
    def encode(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _encode_default(self, text: str) -> list[int]:
        # lm-eval's tok_encode: the tokenizer's default specials, unless the text already starts
        # with the prefix token's text.
        bos = self.tokenizer.decode([self.prefix])
        return self.encode(text, special=not (bos and text.startswith(bos)))

    def pair(self, context: str, continuation: str) -> Request:
        if not context:
            cont = self.encode(continuation, special=False)
            if cont and cont[0] == self.prefix:
                return cont[:1], cont[1:]
            return [self.prefix], cont
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self._encode_default(context + continuation)
        ctx = self._encode_default(context)
        return ctx, whole[len(ctx):]

    def rolling(self, text: str, stride: int | None = None) -> list[Request]:
        """Disjoint prediction windows covering every token of ``text``."""
        return rolling_windows(self.encode(text, special=False), self.prefix, self.window,
                               stride or self.window)

    # -- requests -> scores -----------------------------------------------------------------------
    def __call__(self, requests: Sequence[Request], description: str = "scoring") -> list[Scored]:
        for _, cont in requests:
            if not cont:
                raise ValueError("empty continuation")
        out: list[Scored | None] = [None] * len(requests)
        with reporter().progress(description, len(requests)) as bar:
            for group in shared_contexts(requests):
                for i in group:
                    ctx, cont = requests[i]
                    cont = list(cont[-self.window:])
                    full = (list(ctx) + list(requests[i][1]))[-(self.window + 1):]
                    s = self.runner.score(full, len(full) - len(cont))
                    out[i] = Scored(float(s.logprobs.double().sum()), bool(s.greedy.all()), len(cont))
                bar.advance(len(group))
        return out  # type: ignore[return-value]


def shared_contexts(requests: Sequence[Request]) -> list[list[int]]:
    """Request indices grouped by context, in order of first appearance: the choices of one
    question are scored one after another, so the runner's cache of their context is reused."""
    by_ctx: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(requests):
        by_ctx.setdefault(tuple(ctx), []).append(i)
    return list(by_ctx.values())


def rolling_windows(tokens: list[int], prefix: int, window: int, stride: int) -> list[Request]:
    """lm-eval's ``get_rolling_token_windows(tokens, prefix, max_seq_len=window,
    context_len=window - stride + 1)`` followed by ``make_disjoint_window``.

    The first window predicts its first ``window`` tokens from the prefix token; each later one
    predicts the next ``stride`` tokens (fewer at the end), conditioned on the ``window - stride``
    ... ``window`` tokens before them. Every token is predicted exactly once.
    """
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    if not tokens:
        return []
    out: list[Request] = []
    first = min(window, len(tokens))
    out.append(([prefix], tokens[:first]))  # disjoint form of ([prefix] + tokens[:first-1], ...)
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, stride)
        end = done + n
        inp = tokens[max(0, end - window - 1):end - 1]
        out.append((inp[:len(inp) - (n - 1)], tokens[done:end]))
        done = end
    return out
