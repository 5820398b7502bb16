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

* rows are padded on the *left* and the model is asked only for the logits of the last K
  positions (``logits_to_keep``), so a batch of many choices or windows costs [B, K, V] logits
  instead of [B, T, V];
* requests that share a context (the choices of one question) run that context once: a first
  pass fills a KV cache with the contexts, a second scores all their choices on it, where lm-eval
  runs the whole context again for every choice;
* rolling texts are encoded without the tokenizer's own special tokens (lm-eval's HFLM scores
  P(<bos> | <bos>) for tokenizers that add BOS, e.g. Gemma).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..models.compat import cache_arg, cache_of
from ..report import reporter

if TYPE_CHECKING:
    import torch

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)

DEFAULT_WINDOW = 2048        # lm-eval's default max length when a config names none
LOGIT_FLOATS = 1 << 26       # budget for one batch's kept logits: 64M floats = 256 MiB
CHUNK_FLOATS = 1 << 24       # log-softmax is taken over at most this many logits at a time


@dataclass
class Scored:
    logprob: float   # sum of log P(continuation token | everything before), natural log
    greedy: bool     # every continuation token was the argmax
    tokens: int      # continuation length


class Scorer:
    """Scores requests against one loaded causal LM (an ``oficina.api.Model``)."""

    def __init__(self, model, window: int | None = None, batch_tokens: int = 4096):
        self.lm = model.torch_model
        self.tokenizer = model.tokenizer
        tok = self.tokenizer
        self.prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if self.prefix is None:
            self.prefix = tok.pad_token_id if tok.pad_token_id is not None else 0
        ctx = model.info.context_length or DEFAULT_WINDOW
        self.window = min(window or min(ctx, DEFAULT_WINDOW), ctx)
        self.batch_tokens = batch_tokens
        self.vocab = int(self.lm.get_output_embeddings().weight.shape[0])
        self.device = next(self.lm.parameters()).device
        params = inspect.signature(self.lm.forward).parameters
        self._keep = "logits_to_keep" in params
        self._positions = "position_ids" in params
        # sharing a context's KV cache among its choices needs both, and a Cache object
        self._cache_arg = cache_arg(self.lm)
        self._cache = self._keep and self._positions and self._cache_arg is not None

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
        rows = []
        for ctx, cont in requests:
            if not cont:
                raise ValueError("empty continuation")
            full = (list(ctx) + list(cont))[-(self.window + 1):]
            rows.append((full[:-1], list(cont[-self.window:])))
        shared, single = self._plan(requests)
        out: list[Scored | None] = [None] * len(rows)
        with reporter().progress(description, len(rows)) as bar:
            # Longest first (as lm-eval): the first batch shows the worst memory use at once,
            # and the units of one batch have similar lengths, so little padding.
            units = sorted(([i] for i in single), key=lambda u: -len(rows[u[0]][0]))
            for batch in self._batches(units, lambda u: (len(rows[u[0]][0]), len(rows[u[0]][1]))):
                for i, s in zip(batch, self._forward([rows[i] for i in batch])):
                    out[i] = s
                bar.advance(len(batch))
            size = lambda g: (len(requests[g[0]][0]) + max(len(requests[i][1]) for i in g),
                              max(len(requests[i][1]) for i in g))
            for batch in self._batches(sorted(shared, key=lambda g: -size(g)[0]), size, flat=False):
                for i, s in zip([i for g in batch for i in g], self._forward_shared(batch, requests)):
                    out[i] = s
                bar.advance(sum(len(g) for g in batch))
        return out  # type: ignore[return-value]

    def _plan(self, requests: Sequence[Request]) -> tuple[list[list[int]], list[int]]:
        """Requests that share a context (the choices of one question) are grouped, so the
        context is run once and its cache reused for every choice; the rest go one row each."""
        by_ctx: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(requests):
            by_ctx.setdefault(tuple(ctx), []).append(i)
        shared, single = [], []
        for ctx, idx in by_ctx.items():
            fits = all(len(ctx) + len(requests[i][1]) <= self.window + 1 for i in idx)
            if self._cache and len(idx) > 1 and len(ctx) > 1 and fits:
                shared.append(idx)
            else:
                single += idx
        return shared, single

    def _batches(self, units: list[list[int]], size, flat: bool = True) -> list:
        """Greedy batches of units (a unit: one row, or the rows of one shared context) within
        ``batch_tokens`` padded tokens and ``LOGIT_FLOATS`` kept logits."""
        batches, cur, n, width, keep = [], [], 0, 0, 0
        for u in units:
            t, k = size(u)
            w, kk, nn = max(width, t), max(keep, k), n + len(u)
            if cur and (nn * w > self.batch_tokens or nn * kk * self.vocab > LOGIT_FLOATS):
                batches.append(cur)
                cur, w, kk, nn = [], t, k, len(u)
            cur += u if flat else [u]
            n, width, keep = nn, w, kk
        if cur:
            batches.append(cur)
        return batches

    def _forward(self, rows: list[tuple[list[int], list[int]]]) -> list[Scored]:
        import torch  # here, so that `oficina --help` does not import torch

        width = max(len(inp) for inp, _ in rows)
        keep = max(len(cont) for _, cont in rows)
        ids, mask = _left_padded([inp for inp, _ in rows], width)
        kwargs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                  "use_cache": False}
        if self._positions:  # padded rows start counting positions at their first real token
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        if self._keep:
            kwargs["logits_to_keep"] = keep
        with torch.inference_mode():
            logits = self.lm(**kwargs).logits[:, -keep:]  # [B, K, V]
            return [_score(logits[b, keep - len(cont):], cont) for b, (_, cont) in enumerate(rows)]

    def _forward_shared(self, groups: list[list[int]], requests: Sequence[Request]) -> list[Scored]:
        """Two passes: the contexts but their last token (left padded, [G, P]) filling a KV
        cache, then every choice of every group ([R, L], right padded) on its group's cache
        rows. Each choice row is its context's last token + the continuation but its last, so
        row position j predicts continuation token j, as in the one-pass form."""
        import torch

        prefixes = [list(requests[g[0]][0][:-1]) for g in groups]
        p_ids, p_mask = _left_padded(prefixes, max(map(len, prefixes)))
        which = torch.tensor([k for k, g in enumerate(groups) for _ in g])
        conts = [list(requests[i][1]) for g in groups for i in g]
        rows = [[requests[g[0]][0][-1]] + requests[i][1][:-1] for g in groups for i in g]
        width = max(map(len, rows))
        c_ids = torch.zeros(len(rows), width, dtype=torch.long)
        c_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):
            c_ids[r, :len(row)] = torch.tensor(row)
            c_mask[r, :len(row)] = 1
        start = p_mask.sum(-1)[which][:, None]  # each choice's first position: its prefix length
        dev = self.device
        with torch.inference_mode():
            past = cache_of(self.lm(input_ids=p_ids.to(dev), attention_mask=p_mask.to(dev),
                                    position_ids=((p_mask.cumsum(-1) - 1).clamp(min=0)).to(dev),
                                    use_cache=True, logits_to_keep=1))
            past.batch_select_indices(which.to(dev))  # [G, ...] -> [R, ...], a group per choice
            logits = self.lm(input_ids=c_ids.to(dev),
                             attention_mask=torch.cat([p_mask[which], c_mask], -1).to(dev),
                             position_ids=(start + torch.arange(width)).to(dev),
                             use_cache=True, **{self._cache_arg: past}).logits  # [R, L, V]
            return [_score(logits[r, :len(c)], c) for r, c in enumerate(conts)]


def _left_padded(seqs: list[list[int]], width: int):
    """[B, width] ids and attention mask, real tokens at the right end of each row."""
    import torch

    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for b, seq in enumerate(seqs):
        if seq:
            ids[b, width - len(seq):] = torch.tensor(seq)
            mask[b, width - len(seq):] = 1
    return ids, mask


def _score(logits: "torch.Tensor", cont: list[int]) -> Scored:
    """Sum of log-softmax at the targets, a few positions at a time so [K, V] never doubles."""
    import torch

    target = torch.tensor(cont, device=logits.device)
    step = max(1, CHUNK_FLOATS // logits.shape[-1])
    total, greedy = 0.0, True
    for s in range(0, len(cont), step):
        x = logits[s:s + step].float()  # [k, V]
        t = target[s:s + step]
        total += float((x.gather(-1, t[:, None])[:, 0] - torch.logsumexp(x, -1)).sum())
        greedy = greedy and bool((x.argmax(-1) == t).all())
    return Scored(total, greedy, len(cont))


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
