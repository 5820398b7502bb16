"""The three model families a config can make, one row each: which transformers class holds it,
which objective trains it, how it encodes positions (and what that limits), and how the
architecture's concepts map onto the family's config keys (the same concepts ``ModelInfo``
reads back from config.json, so ``oficina show`` prints what the config said).

A new family is a new row: a ``Family`` registered here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOptions

if TYPE_CHECKING:
    from .config import ArchConfig
    from .tokenizer import Special


@dataclass(frozen=True)
class Family:
    name: str
    kind: str                                   # ModelInfo.kind
    like: str                                   # what people call it
    model_class: str                            # transformers class, with the objective's head
    objective: str                              # objectives.OBJECTIVES key
    positions: str                              # how positions are encoded, for messages
    grouped_kv: bool                            # can kv_heads be fewer than heads
    hf_config: Callable[[ArchConfig, Special], Any]
    check: Callable[[ArchConfig], None] = lambda arch: None
    # settings only this family has -> their default given the rest of the config
    extra: dict[str, Callable[[ArchConfig], Any]] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register(f: Family) -> Family:
    FAMILIES[f.name] = f
    return f


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise InvalidOptions(f"family must be one of {', '.join(FAMILIES)} (got {name!r})")
    return FAMILIES[name]


# -- decoder-only, Llama-like ---------------------------------------------------------------------
def _llama(a: ArchConfig, sp: Special):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=a.vocab_size, hidden_size=a.embedding_length, intermediate_size=a.feed_forward_length,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        max_position_embeddings=a.context_length, attention_dropout=a.dropout,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
        tie_word_embeddings=a.tie_embeddings, bos_token_id=sp.bos, eos_token_id=sp.eos, pad_token_id=sp.pad)


def _rope_check(a: ArchConfig) -> None:
    d = a.head_dim
    if d % 2:
        raise InvalidOptions(f"heads: rotary position embeddings turn pairs of dimensions, so a head needs "
                             f"an even size; embedding_length {a.embedding_length} / heads {a.heads} = {d}")
    # RoPE turns dimension pair i by angle p * theta^(-2i/d) at position p (Su et al. 2021, eq. 15);
    # the slowest pair turns once in 2*pi*theta^((d-2)/d) tokens. Past that, positions repeat in
    # the very dimensions meant to tell far-apart tokens apart, which is why long-context models
    # raise the base (Men et al. 2024, "Base of RoPE Bounds Context Length").
    longest = 2 * math.pi * a.rope_theta ** ((d - 2) / d)
    if a.context_length > longest:
        raise InvalidOptions(f"context_length {a.context_length} is longer than rotary positions with "
                             f"rope_theta {a.rope_theta:g} can tell apart (their slowest pair of dimensions "
                             f"turns once every {longest:,.0f} tokens); raise rope_theta or shorten "
                             f"context_length")


register(Family(
    name="llama", kind="decoder-only", like="Llama-like", model_class="LlamaForCausalLM",
    objective="next-token", positions="rotary positions (RoPE) are set up and trained up to context_length",
    grouped_kv=True, hf_config=_llama, check=_rope_check,
    extra={"rope_theta": lambda a: 10000.0},
))


# -- encoder-only, BERT-like ----------------------------------------------------------------------
def _bert(a: ArchConfig, sp: Special):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=a.vocab_size, hidden_size=a.embedding_length, intermediate_size=a.feed_forward_length,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, max_position_embeddings=a.context_length,
        hidden_dropout_prob=a.dropout, attention_probs_dropout_prob=a.dropout,
        tie_word_embeddings=a.tie_embeddings, pad_token_id=sp.pad)


register(Family(
    name="bert", kind="encoder-only", like="BERT-like", model_class="BertForMaskedLM",
    objective="masked-token", positions="the learned position table has context_length rows",
    grouped_kv=False, hf_config=_bert,
))


# -- encoder-decoder, T5-like ---------------------------------------------------------------------
def _t5(a: ArchConfig, sp: Special):
    from transformers import T5Config

    return T5Config(
        vocab_size=a.vocab_size, d_model=a.embedding_length, d_kv=a.head_dim, d_ff=a.feed_forward_length,
        num_layers=a.layers, num_decoder_layers=a.decoder_layers, num_heads=a.heads,
        n_positions=a.context_length, dropout_rate=a.dropout,
        feed_forward_proj="gated-gelu",  # T5 v1.1 (Shazeer 2020, "GLU Variants Improve Transformer")
        tie_word_embeddings=a.tie_embeddings, decoder_start_token_id=sp.pad, pad_token_id=sp.pad,
        eos_token_id=sp.eos)


register(Family(
    name="t5", kind="encoder-decoder", like="T5-like", model_class="T5ForConditionalGeneration",
    objective="span-corruption",
    positions="relative position buckets have no table to run out of, but the model is only "
              "trained on inputs up to context_length",
    grouped_kv=False, hf_config=_t5,
    extra={"decoder_layers": lambda a: a.layers},
))
