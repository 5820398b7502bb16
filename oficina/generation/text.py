"""Turning generated token ids into text as they come: incremental detokenization and stop
sequences."""

from __future__ import annotations

from typing import Sequence


class Detokenizer:
    """Incremental decoding that is correct for byte-level BPE and SentencePiece.

    Decoding one token alone loses the leading-space rules of SentencePiece and can cut a UTF-8
    character in half, so each step decodes a short window of previous tokens plus the new ones and
    emits only the growth (the prefix/read offsets scheme used by vLLM and text-generation-inference).
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # ids before this have been emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. an incomplete character at the very end)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""


class StopMatcher:
    """Holds back text that might be the start of a stop sequence; reports the first match.

    Ollama's semantics: the stop text itself and everything after it is not returned.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.hit = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.hit:
            return "", True
        self.buf += text
        found = [(i, s) for s in self.stops if (i := self.buf.find(s)) >= 0]
        if found:
            i = min(found)[0]
            out, self.buf, self.hit = self.buf[:i], "", True
            return out, True
        hold = self._held()
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(self.buf) - hold:]
        return out, False

    def _held(self) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buf)), best, -1):
                if self.buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self, text: str = "") -> str:
        out, hit = self.feed(text)
        if hit:
            return out
        out, self.buf = out + self.buf, ""
        return out
