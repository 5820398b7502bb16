"""Byte-level BPE tokenizers trained on a corpus (Hugging Face ``tokenizers``), saved in the
standard ``tokenizer.json`` layout that transformers, llama.cpp's converter and every HF tool
read; and the special token ids the objectives need.

Byte-level BPE (GPT-2, Radford et al. 2019, §2.2) starts from the 256 byte values, so any text
encodes with no unknown token; merges are learned from the corpus up to the vocabulary size.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOptions, OficinaError
from ..models.loader import quiet_transformers
from ..registry.registry import Registry
from ..report import reporter
from ..tuning.session import open_base
from .corpus import Corpus

PAD, BOS, EOS, UNK, MASK = "<pad>", "<s>", "</s>", "<unk>", "<mask>"
SENTINEL = "<extra_id_{}>"  # T5's names for the span-corruption placeholders
_SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")


@dataclass(frozen=True)
class Special:
    """Token ids the objectives and model configs need (None when the tokenizer lacks one)."""

    pad: int
    bos: int | None
    eos: int | None
    mask: int | None
    sentinels: tuple[int, ...]   # <extra_id_0>, <extra_id_1>, ... in order
    vocab: int                   # len(tokenizer)
    all: frozenset[int]          # every special id (never masked, never a random replacement)


def special_ids(tok) -> Special:
    vocab = tok.get_vocab()
    sentinels = sorted((int(m.group(1)), i) for t, i in vocab.items() if (m := _SENTINEL_RE.fullmatch(t)))
    ids = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.mask_token_id, tok.unk_token_id]
    pad = next((i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None), 0)
    return Special(pad=pad, bos=tok.bos_token_id, eos=tok.eos_token_id, mask=tok.mask_token_id,
                   sentinels=tuple(i for _, i in sentinels), vocab=len(tok),
                   all=frozenset(i for i in ids + [i for _, i in sentinels] if i is not None))


def train_tokenizer(corpus: str | Path | Corpus, vocab_size: int, out: str | Path | None = None,
                    sentinels: int = 32, min_frequency: int = 2, skip: Callable[[int], bool] | None = None):
    """Train a byte-level BPE tokenizer of ``vocab_size`` tokens (special tokens included) on the
    documents of ``corpus``, streamed, leaving out document ``i`` when ``skip(i)`` (validation
    text stays unseen); save it to ``out`` when given. Returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if sentinels < 0:
        raise InvalidOptions(f"sentinels must be 0 or more (got {sentinels})")
    special = [PAD, BOS, EOS, UNK, MASK] + [SENTINEL.format(i) for i in range(sentinels)]
    low = 256 + len(special)
    if vocab_size < low:
        raise InvalidOptions(f"vocab_size must be at least {low} (256 byte tokens and {len(special)} "
                             f"special tokens), got {vocab_size}")
    if min_frequency < 1:
        raise InvalidOptions(f"min_frequency must be at least 1 (got {min_frequency})")
    source = corpus if isinstance(corpus, Corpus) else Corpus.open(corpus)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    with reporter().progress("training the tokenizer", source.size, unit="bytes") as bar:
        def texts():
            for i, (text, _) in enumerate(source.documents()):
                bar.advance(len(text.encode("utf-8")) + 2)
                if skip is None or not skip(i):
                    yield text

        tok.train_from_iterator(texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, mask_token=MASK, additional_special_tokens=special[5:])
    if len(fast) < vocab_size:
        reporter().warn(f"the corpus only supports {len(fast)} tokens (asked for {vocab_size}): "
                        f"there are no more pairs seen at least {min_frequency} times to merge")
    if out is not None:
        save(fast, Path(out))
    return fast


def save(tok, out: Path) -> Path:
    """Write the tokenizer folder atomically (temp folder + rename)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        tok.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_tokenizer(ref: str, registry=None):
    """A tokenizer from a folder (``tokenizer.json`` layout) or from a registry model."""
    path = Path(ref).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        from transformers import AutoTokenizer

        quiet_transformers()
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise OficinaError(f"{path}: cannot read a tokenizer there ({str(e).splitlines()[0]})") from None

    return open_base(ref, registry or Registry()).tokenizer
