"""A Hugging Face tokenizer.json -> the "tokenizer.*" keys of a GGUF file (the vocabulary half of
llama.cpp's convert_hf_to_gguf.py).

Two kinds of tokenizer.json BPE are written, the two llama.cpp has tokenizers for:

  byte-level BPE   (GPT-2, Llama 3, SmolLM, Qwen2)   -> tokenizer.ggml.model "gpt2": the tokens
                   in the byte alphabet, merges, and ``tokenizer.ggml.pre`` naming the split regex
                   (TextModel._set_vocab_gpt2)
  SentencePiece    (Llama 2, Mistral v0.1, Gemma: BPE over "▁"-spelled text with byte fallback)
                   -> tokenizer.ggml.model "llama": tokens, scores and token types
                   (TextModel._set_vocab_sentencepiece, _set_vocab_llama_hf)

Both then get the special-token ids, add_bos/add_eos, merges and the chat template through
gguf-py's ``SpecialVocab``, which reads them as convert_hf_to_gguf.py does.

llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined text is the vocabulary
token with the highest *score* (llm_tokenizer_spm); tokenizer.json lists *merges* by rank. A
token's score here is minus the rank of the first merge that makes it, so both pick the same
merge; tokens no merge makes (characters, bytes, specials) never win a merge and score below
all others. convert_hf_to_gguf.py's own fallback for this case (LlamaHfVocab) gives every token
-1000, which leaves llama.cpp's merge order to chance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
from gguf import TokenType

from ..errors import FormatError
from .untrusted import read_json

__all__ = ["BPE_PRE", "write_tokenizer"]

_LLAMA3_SPLIT = (  # Meta-Llama-3 tokenizer.json
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (  # Qwen2 tokenizer.json: like Llama 3, but digits one at a time
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.json pre-tokenizer steps -> tokenizer.ggml.pre, the name llama.cpp (llama-vocab.cpp)
# keys its split regexes by. convert_hf_to_gguf.py finds it by hashing a sample's token ids; the
# steps say the same thing without a hash table. transformers rebuilds the split for the names in
# its GGUF_PRE_TOKENIZER_SPLITS, and falls back to GPT-2's for the rest ("smollm" included, so
# there its round trip splits digit runs differently from llama.cpp).
BPE_PRE: dict[tuple[str, ...], str] = {
    ("ByteLevel",): "gpt-2",
    ("Digits", "ByteLevel"): "smollm",  # SmolLM/SmolLM2 (convert_hf_to_gguf_update.py)
    ("Split " + _LLAMA3_SPLIT, "ByteLevel/raw"): "llama-bpe",
    ("Split " + _QWEN2_SPLIT, "ByteLevel/raw"): "qwen2",
}

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _pre_steps(pre: dict | None) -> tuple[str, ...]:
    """A tokenizer.json pre_tokenizer as a tuple of step names; odd settings make odd names."""
    if pre is None:
        return ()
    if pre.get("type") == "Sequence":
        return tuple(s for p in pre.get("pretokenizers", []) for s in _pre_steps(p))
    kind = pre.get("type", "?")
    if kind == "ByteLevel":
        return ("ByteLevel" + ("/prefix-space" if pre.get("add_prefix_space") else "")
                + ("" if pre.get("use_regex", True) else "/raw"),)
    if kind == "Digits":
        return ("Digits" if pre.get("individual_digits") else "Digits/grouped",)
    if kind == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert"):
        return ("Split " + str((pre.get("pattern") or {}).get("Regex")),)
    return (kind + json.dumps({k: v for k, v in pre.items() if k != "type"}, sort_keys=True),)


def _normalizer_steps(norm: dict | None) -> list[dict]:
    if norm is None:
        return []
    return list(norm.get("normalizers", [])) if norm.get("type") == "Sequence" else [norm]


def _sentencepiece_prefix(tj: dict) -> bool | None:
    """For a "▁"-spelled BPE: whether a space is put before the text (llama.cpp's
    tokenizer.ggml.add_space_prefix); None when the tokenizer is not one llama.cpp can replay."""
    steps = _normalizer_steps(tj.get("normalizer"))
    kinds = [s.get("type") for s in steps]
    pre = tj.get("pre_tokenizer")
    space_to_meta = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    if kinds in (["Replace"], ["Prepend", "Replace"]) and steps[-1] == space_to_meta:
        prefix = kinds[0] == "Prepend" and steps[0].get("prepend") == "\u2581"
        # Gemma splits the normalized text on " " (which is then never there): a no-op
        if pre is None or (pre.get("type") == "Split" and (pre.get("pattern") or {}).get("String") == " "):
            return prefix
        return None
    if not steps and pre and pre.get("type") == "Metaspace" and pre.get("replacement") == "\u2581":
        return pre.get("prepend_scheme", "always") != "never"
    return None


def _vocab(tj: dict, n_vocab: int, path: Path) -> tuple[dict[int, str], dict[int, dict]]:
    model = tj.get("model") or {}
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    by_id = {i: tok for tok, i in model.get("vocab", {}).items()} | {i: t["content"] for i, t in added.items()}
    if by_id and max(by_id) >= n_vocab:
        raise FormatError(f"{path}: token id {max(by_id)} does not fit the model's {n_vocab} embedding rows")
    return by_id, added


def _byte_level(tj: dict, path: Path, n_vocab: int) -> tuple[list[str], list[int], str]:
    """Tokens, token types and pre-tokenizer name, padded to the embedding's rows with unused
    "[PAD{i}]" tokens (TextModel.get_vocab_base)."""
    # NFC is what Qwen2 declares; llama.cpp and transformers' GGUF loader both leave it out.
    if (normalizer := (tj.get("normalizer") or {}).get("type")) not in (None, "NFC"):
        raise FormatError(f"{path}: tokenizer normalizer {normalizer} has no GGUF equivalent")
    steps = _pre_steps(tj.get("pre_tokenizer"))
    if steps not in BPE_PRE:
        shown = " + ".join(s[:40] for s in steps) or "none"
        raise FormatError(f"{path}: pre-tokenizer {shown} is not a byte-level BPE one GGUF can name "
                          f"(supported: {', '.join(sorted(BPE_PRE.values()))}, or SentencePiece-style BPE)")
    by_id, added = _vocab(tj, n_vocab, path)
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        tok = by_id[i]
        if i in added:
            # added tokens are stored as text, not in the byte alphabet; <|...|> counts as special
            # even when unmarked (TextModel.does_token_look_special)
            special = added[i].get("special") or (tok.startswith("<|") and tok.endswith("|>"))
            types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(tok)
    return tokens, types, BPE_PRE[steps]


def _sentencepiece(tj: dict, path: Path, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores (see the module docstring) and types of a "▁"-spelled BPE with byte fallback."""
    model = tj["model"]
    by_id, added = _vocab(tj, n_vocab, path)
    vocab = model.get("vocab", {})
    rank: dict[int, int] = {}
    for r, merge in enumerate(model.get("merges", [])):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        made = vocab.get(left + right)
        if made is not None and made not in rank:
            rank[made] = r
    floor = -float(len(model.get("merges", [])) + 1)
    unk = model.get("unk_token")
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            scores.append(floor)
            types.append(TokenType.UNUSED)
            continue
        tok = by_id[i]
        tokens.append(tok)
        scores.append(-float(rank[i]) if i in rank else floor)
        if _BYTE_TOKEN.fullmatch(tok):  # byte-fallback pieces, even when listed as added tokens
            types.append(TokenType.BYTE)
        elif tok == unk:
            types.append(TokenType.UNKNOWN)
        elif i in added:
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    return tokens, scores, types


def write_tokenizer(w: gguf.GGUFWriter, src: Path, n_vocab: int) -> str:
    """Add the "tokenizer.*" keys for the tokenizer.json in ``src``; return the kind written
    ("gpt2" or "llama", tokenizer.ggml.model)."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise FormatError(f"{src} has no tokenizer.json; only BPE tokenizers can be exported to GGUF")
    tj = read_json(path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise FormatError(f"{path}: a {model.get('type')} tokenizer cannot be exported to GGUF (only BPE)")
    prefix = _sentencepiece_prefix(tj) if model.get("byte_fallback") else None
    if prefix is not None:
        tokens, scores, types = _sentencepiece(tj, path, n_vocab)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_add_space_prefix(prefix)
        kind = "llama"
    else:
        tokens, types, pre = _byte_level(tj, path, n_vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        kind = "gpt2"
    # merges, bos/eos/unk/pad ids, add_bos/add_eos (from tokenizer_config or the post-processor's
    # template) and the chat template (tokenizer_config or chat_template.jinja): gguf-py reads
    # them the way convert_hf_to_gguf.py does.
    gguf.SpecialVocab(src, load_merges=True, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    config = src / "tokenizer_config.json"
    if kind == "gpt2" and config.is_file() and isinstance(p := read_json(config).get("add_prefix_space"), bool):
        w.add_add_space_prefix(p)  # LlamaModel.set_vocab
    return kind
