"""A text corpus streamed from disk, and the token files made from it.

A corpus is a ``.txt`` file (documents are paragraphs separated by blank lines, as in
``tuning/data.py``; a paragraph longer than a million characters is cut), a ``.jsonl`` file (one ``{"text": ...}`` document a line) or a folder of
them. Documents are read one at a time, never the whole corpus, and tokenized once into flat
token files (``train.bin``, ``val.bin``: documents joined by the end-of-text token, as GPT-2 and
nanoGPT's ``prepare.py`` do), which training reads through a memory map. So a corpus larger than
memory trains in the memory of one batch. Every ``1/val_split``-th document is held out for
validation, so the split is fixed and needs no second pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FormatError
from ..formats.records import json_object
from ..report import reporter

SUFFIXES = (".txt", ".jsonl")
CHUNK = 256  # documents tokenized per call (the fast tokenizer batches in Rust)
MAX_DOC = 1 << 20  # characters: a longer paragraph (a file with no blank lines) is cut into pieces


@dataclass
class Corpus:
    path: Path
    files: list[Path]
    _digest: str | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Corpus:
        p = Path(path).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                raise FormatError(f"{p}: no {' or '.join(SUFFIXES)} files in this folder")
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise FormatError(f"{p}: unknown corpus format {p.suffix or '(no suffix)'}; expected "
                                  f"{', '.join(SUFFIXES)} or a folder of them")
            files = [p]
        else:
            raise FormatError(f"{path}: no such corpus file or folder")
        return cls(p, files)

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def documents(self) -> Iterator[tuple[str, str]]:
        """(text, "file:line") of every document, read line by line."""
        for f in self.files:
            yield from (_jsonl if f.suffix.lower() == ".jsonl" else _txt)(f)

    def digest(self) -> str:
        """sha256 over the files' names and bytes (read once, then remembered)."""
        if self._digest is None:
            self._digest = self._hash()
        return self._digest

    def _hash(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(str(f.relative_to(self.path) if f != self.path else f.name).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return "sha256:" + h.hexdigest()


def _lines(p: Path) -> Iterator[tuple[int, str]]:
    with open(p, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError(f"{p}:{n}: not valid UTF-8") from None


def _txt(p: Path) -> Iterator[tuple[str, str]]:
    para: list[str] = []
    start, size = 0, 0
    for n, line in _lines(p):
        if line.strip():
            if not para:
                start, size = n, 0
            para.append(line.rstrip("\r\n"))
            size += len(line)
            if size > MAX_DOC:  # memory stays bounded whatever the file looks like
                yield "\n".join(para), f"{p}:{start}"
                para = []
        elif para:
            yield "\n".join(para), f"{p}:{start}"
            para = []
    if para:
        yield "\n".join(para), f"{p}:{start}"


def _jsonl(p: Path) -> Iterator[tuple[str, str]]:
    expected = 'expected {"text": "..."} (one document a line)'
    for n, line in _lines(p):
        if not line.strip():
            continue
        obj = json_object(line, f"{p}:{n}", expected)
        if not isinstance(obj.get("text"), str):
            raise FormatError(f"{p}:{n}: {expected}")
        if obj["text"].strip():
            yield obj["text"], f"{p}:{n}"


def held_out(val_split: float, seed: int):
    """Is document ``i`` a validation document? Every ``1/val_split``-th, from an offset set by the
    seed: decided while streaming, the same for the tokenizer, the token files and a resumed run."""
    every = round(1 / val_split) if val_split > 0 else 0
    return lambda i: bool(every) and (i + seed) % every == 0


# -- token files ----------------------------------------------------------------------------------
@dataclass
class Tokens:
    folder: Path
    dtype: str
    train_count: int
    val_count: int
    documents: tuple[int, int]  # (train, validation)

    def train(self) -> np.ndarray:
        return _map(self.folder / "train.bin", self.dtype, self.train_count)

    def val(self) -> np.ndarray:
        return _map(self.folder / "val.bin", self.dtype, self.val_count)


def _map(path: Path, dtype: str, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def tokenize(corpus: Corpus, tokenizer, folder: Path, val_split: float, seed: int,
             eval_corpus: Corpus | None = None) -> Tokens:
    """Token files for ``corpus`` in ``folder`` (reused when corpus, tokenizer and split are the
    same). With ``eval_corpus`` all of ``corpus`` trains and ``eval_corpus`` validates."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise FormatError("the tokenizer has no end-of-text token to separate documents with")
    dtype = "uint16" if len(tokenizer) <= 1 << 16 else "uint32"
    folder = Path(folder)
    key = {"corpus": corpus.digest(), "eval": eval_corpus.digest() if eval_corpus else None,
           "tokenizer": tokenizer_digest(tokenizer), "val_split": val_split, "seed": seed,
           "dtype": dtype, "eos": eos}
    meta_path = folder / "tokens.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return Tokens(folder, dtype, meta["train"], meta["val"], tuple(meta["documents"]))
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "val": 0}
    docs = [0, 0]
    total = corpus.size + (eval_corpus.size if eval_corpus else 0)
    with open(folder / "train.bin.partial", "wb") as train, open(folder / "val.bin.partial", "wb") as val, \
            reporter().progress("tokenizing the corpus", total, unit="bytes") as bar:
        def write(chunk: list[tuple[str, bool]]) -> None:
            ids = tokenizer([t for t, _ in chunk], add_special_tokens=False)["input_ids"]
            for (text, held), doc in zip(chunk, ids):
                name = "val" if held else "train"
                arr = np.asarray(doc + [eos], dtype=dtype)
                (val if held else train).write(arr.tobytes())
                counts[name] += len(arr)
                docs[held] += 1
                bar.advance(len(text.encode("utf-8")) + 1)

        sources = [(corpus, held_out(val_split if eval_corpus is None else 0, seed))]
        if eval_corpus is not None:
            sources.append((eval_corpus, lambda i: True))
        for source, is_val in sources:
            chunk: list[tuple[str, bool]] = []
            for i, (text, _) in enumerate(source.documents()):
                chunk.append((text, bool(is_val(i))))
                if len(chunk) == CHUNK:
                    write(chunk)
                    chunk = []
            if chunk:
                write(chunk)
        for fh in (train, val):
            fh.flush()
            os.fsync(fh.fileno())
    for name in ("train", "val"):
        os.replace(folder / f"{name}.bin.partial", folder / f"{name}.bin")
    meta = {"key": key, "train": counts["train"], "val": counts["val"], "documents": docs}
    tmp = meta_path.with_suffix(".partial")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
    return Tokens(folder, dtype, counts["train"], counts["val"], (docs[0], docs[1]))


def tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def unigram_perplexity(train: np.ndarray, val: np.ndarray, vocab: int) -> float:
    """Perplexity on ``val`` of the token frequencies of ``train`` (add-one smoothed): what a
    model that ignores context entirely scores. A trained model must beat it to have learned
    anything about order."""
    counts = np.ones(vocab, dtype=np.float64)
    step = 1 << 24
    for s in range(0, len(train), step):
        counts += np.bincount(np.asarray(train[s:s + step], dtype=np.int64), minlength=vocab)[:vocab]
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[np.asarray(val, dtype=np.int64)].mean())) if len(val) else float("nan")
