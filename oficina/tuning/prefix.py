"""Prefix tuning (Li & Liang 2021): trainable key/value vectors of ``num_virtual_tokens``
positions prepended in every attention layer. Implemented by peft.

peft starts the prefixes as random vectors, which on a pretrained model is far from anything its
attention has seen: SmolLM2's loss on the first batch went from 2.2 to 10. The paper found that
initialising them with the activations of real words trains better and more stably (§7.2); here
the prefix starts as the model's own keys and values for ``init_text``, so at step 0 the model
behaves as if that text came before the input. With ``projection`` the prefixes come from a
small MLP instead (the paper's reparametrisation, §4.3), which starts random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import InvalidOptions
from ..models.compat import accept_past_key_values, cache_of
from . import peft_common
from .method import Method, register

DEFAULT_INIT = "Here is a question, followed by a helpful and accurate answer."


@dataclass
class PrefixConfig:
    num_virtual_tokens: int = 20
    init_text: str | None = None  # None: DEFAULT_INIT without projection; "random": peft's init
    projection: bool = False
    projection_hidden: int = 256
    peft_type: ClassVar[str | None] = "PREFIX_TUNING"

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise InvalidOptions(f"num_virtual_tokens must be at least 1 (got {self.num_virtual_tokens})")
        if self.projection and self.init_text not in (None, "random"):
            raise InvalidOptions("prefix init_text needs projection: false (with the MLP "
                                 "reparametrisation the prefixes are produced by the MLP)")
        if self.init_text is not None and not self.init_text.strip():
            raise InvalidOptions("prefix init_text is empty")

    def peft(self, task):
        import peft

        return peft.PrefixTuningConfig(task_type=peft_common.task_type(task),
                                       num_virtual_tokens=self.num_virtual_tokens,
                                       prefix_projection=self.projection,
                                       encoder_hidden_size=self.projection_hidden)


def apply(model, cfg: PrefixConfig, task):
    text = None if cfg.projection or cfg.init_text == "random" else (cfg.init_text or DEFAULT_INIT)
    kv = _text_key_values(model, text, cfg.num_virtual_tokens) if text else None
    peft_model = _backbone_takes_prefixes(peft_common.apply(model, cfg.peft(task)))
    if kv is not None:
        embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
        with torch.no_grad():
            embedding.weight.copy_(kv.to(embedding.weight.dtype))
    return peft_model


def _text_key_values(model, text: str, n: int) -> torch.Tensor | None:
    """[n, layers * 2 * kv_heads * head_dim]: the keys and values ``model`` computes for the
    first ``n`` tokens of ``text`` (repeated when shorter), in peft's prefix layout (per token:
    layer 0 keys, layer 0 values, layer 1 keys, ...). None for encoder-decoders (peft lays their
    prefixes out differently) and encoders (no key/value cache), which keep peft's random start."""
    from transformers import AutoTokenizer

    if getattr(model.config, "is_encoder_decoder", False):
        return None
    try:
        tok = AutoTokenizer.from_pretrained(model.name_or_path)
    except (OSError, ValueError) as e:
        raise InvalidOptions(f"prefix init_text: cannot load the tokenizer of {model.name_or_path} ({e}); "
                             f"set init_text: random") from None
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InvalidOptions(f"prefix init_text {text!r} has no tokens")
    ids = (ids * (n // len(ids) + 1))[:n]
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    body = getattr(model, "base_model", model)  # the transformer under any task head
    with torch.no_grad():
        cache = cache_of(body(input_ids=torch.tensor([ids], device=device), use_cache=True))
    model.train(was)
    if cache is None or not hasattr(cache, "layers"):  # encoders keep no cache: peft's start
        return None
    rows = []
    for layer in cache.layers:
        keys, values = layer.keys[0], layer.values[0]           # [kv_heads, n, head_dim]
        rows += [keys.transpose(0, 1), values.transpose(0, 1)]  # [n, kv_heads, head_dim]
    return torch.stack(rows, dim=1).reshape(n, -1).float()      # [n, layers * 2 * kv_heads * head_dim]


def load(model, folder, task):
    return _backbone_takes_prefixes(peft_common.load(model, folder))


def _backbone_takes_prefixes(peft_model):
    """peft hands the prefixes to the model (or an encoder's backbone) by the old keyword, which
    warns on every call or, for encoders, makes peft refuse the model (``models.compat``)."""
    accept_past_key_values(peft_model.base_model)
    backbone = getattr(peft_model, "transformer_backbone_name", None)
    if backbone:
        accept_past_key_values(peft_model.base_model.get_submodule(backbone))
    return peft_model


METHOD = register(Method(
    name="prefix", summary="trainable key/value prefixes in every attention layer (peft)",
    config=PrefixConfig, apply=apply, trainable=peft_common.by_name("prompt_encoder", "modules_to_save"),
    save=peft_common.save, load=load, merge=None,
    learning_rate=1e-2,  # peft's prefix-tuning examples
))
