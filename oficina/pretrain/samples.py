"""What a freshly trained model does with a prompt, one way per kind: a decoder continues the
text (our own decode loop and sampler, as ``oficina run``), an encoder fills ``<mask>``, an
encoder-decoder writes what hides behind ``<extra_id_0>``."""

from __future__ import annotations

import torch
from torch import nn

from ..generation.engine import Engine
from ..options import Options
from .tokenizer import MASK, SENTINEL, Special


def samples(model: nn.Module, tok, kind: str, prompts: list[str], sp: Special, context_length: int | None,
            seed: int = 0, num_predict: int = 48) -> list[tuple[str, str]]:
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [(p, KINDS[kind](model, tok, p, sp, context_length, seed + i, num_predict))
                    for i, p in enumerate(prompts)]
    finally:
        model.train(was_training)


def _continue(model, tok, prompt, sp, context_length, seed, num_predict) -> str:
    # documents were separated by end-of-text in training, so it also starts one here
    ids = ([sp.eos] if sp.eos is not None else []) + list(tok(prompt, add_special_tokens=False)["input_ids"])
    engine = Engine(model, tok, [sp.eos] if sp.eos is not None else [], context_length)
    out = engine.generate(ids, Options.from_mapping({"seed": seed, "num_predict": num_predict}))
    return prompt + out.text


def _fill_mask(model, tok, prompt, sp, context_length, seed, num_predict) -> str:
    mask = tok.mask_token or MASK
    text = prompt if mask in prompt else f"{prompt} {mask}"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=_device(model))
    logits = model(input_ids=ids).logits[0]                    # [T, V]
    where = (ids[0] == sp.mask).nonzero().flatten().tolist()
    guesses = [" / ".join(repr(tok.decode([i])) for i in logits[w].topk(3).indices.tolist()) for w in where]
    return f"{text}  ->  " + "; ".join(guesses)


def _fill_span(model, tok, prompt, sp, context_length, seed, num_predict) -> str:
    marker = SENTINEL.format(0)
    text = prompt if marker in prompt else f"{prompt} {marker}"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [sp.eos]
    out = model.generate(input_ids=torch.tensor([ids], device=_device(model)), max_new_tokens=min(num_predict, 16),
                         do_sample=False, decoder_start_token_id=sp.pad, eos_token_id=sp.eos, pad_token_id=sp.pad)
    return f"{text}  ->  {tok.decode(out[0].tolist(), skip_special_tokens=False)}"


def _device(model) -> torch.device:
    return next(model.parameters()).device


KINDS = {"decoder-only": _continue, "encoder-only": _fill_mask, "encoder-decoder": _fill_span}
