"""Texts -> unit vectors with any registry encoder, in batches.

The pooling is the project's one home for it (``models/pooling.py``), read from the model's
sentence-transformers files, so MiniLM's vectors match ``SentenceTransformer.encode`` to 1e-5
(``tests/test_rag.py`` checks it). Texts are tokenized once, truncated to the model's window
(MiniLM: 256 word pieces; ``sentence_bert_config.json``), and batched in order of token count
(sentence-transformers orders by characters), so a batch pads to similar lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OficinaError
from ..generation.session import load
from ..models.pooling import PoolingSpec, pool, spec_for

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EncoderInfo:
    name: str  # registry ref, e.g. "minilm:latest@1"
    digest: str | None  # the registry manifest digest (lineage of a collection)
    dim: int
    window: int  # tokens per text, special tokens included
    spec: PoolingSpec


class Encoder:
    def __init__(self, model, dtype: str = "fp32", batch_size: int = 64):
        if model.info.kind not in ("encoder-only", "decoder-only"):
            raise OficinaError(f"{model.info.architecture} is {model.info.kind}; embeddings need an "
                               f"encoder (e.g. minilm)")
        if dtype not in DTYPES:
            raise OficinaError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        self.model = model
        self.torch_model = model.torch_model.to(DTYPES[dtype]).eval()
        self.tokenizer = model.tokenizer
        self.batch_size = batch_size
        folder = getattr(model.loaded, "folder", None)
        spec = spec_for(folder)
        if model.info.kind == "decoder-only" and folder is not None and \
                not (folder / "1_Pooling").exists():
            spec = PoolingSpec("last", True, spec.max_tokens)  # a causal model's summary is its last token
        ctx = model.info.context_length or 512
        window = min(spec.max_tokens or ctx, ctx)
        entry = model.entry
        self.info = EncoderInfo(entry.ref if entry else str(folder), entry.digest if entry else None,
                                model.info.embedding_length, window, spec)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None,
               unit: bool = True) -> np.ndarray:
        """[len(texts), dim] float32. L2-normalised when the model says so (MiniLM does) or
        ``unit`` (the index compares by inner product, which is cosine only on unit vectors)."""
        out = np.zeros((len(texts), self.info.dim), dtype=np.float32)
        if not len(texts):
            return out
        # Tokenized once, then batched by token count (sentence-transformers sorts by characters):
        # a batch pads to the length of its longest text, so rows of equal token count pad least
        toks = self.tokenizer(list(texts), truncation=True, max_length=self.info.window)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in toks]
        order = sorted(range(len(texts)), key=lambda i: -len(toks["input_ids"][i]))
        tm = self.torch_model
        dev = next(tm.parameters()).device
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            enc = self.tokenizer.pad({k: [toks[k][i] for i in idx] for k in keys},
                                     return_tensors="pt")
            enc = {k: v.to(dev) for k, v in enc.items()}
            if self.model.info.kind == "encoder-only":
                hidden = tm(**enc).last_hidden_state
            else:
                hidden = tm(**enc, output_hidden_states=True, use_cache=False).hidden_states[-1]
            vec = pool(self.info.spec.pooling, hidden, enc["attention_mask"],
                       self.info.spec.normalize or unit)
            out[idx] = vec.float().cpu().numpy()
            if progress:
                progress(len(idx))
        return out


def load_encoder(name: str, registry=None, dtype: str = "fp32", batch_size: int = 64) -> Encoder:
    return Encoder(load(name, registry=registry), dtype, batch_size)
