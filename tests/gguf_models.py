"""Tiny random models of each family the GGUF exporter has a row for, saved as HF folders with a
tokenizer of the kind the real family uses (byte-level BPE; SentencePiece-style for Gemma).

Norms and biases are randomised too, so a misplaced one shows in the logits. ``width=256`` makes
every matrix a whole number of K-quant super-blocks except ffn_down (rows of 384), which then
takes llama.cpp's fallback types.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "mistral", "qwen2", "gemma3_text")

SAMPLE = "The quick brown fox jumps over the lazy dog. Größe 12345, naïve café 🦙 twice  spaced"
CHAT = "{% for m in messages %}<|begin|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world! How are you today?",
         "GGUF files carry the weights and the tokenizer of a model."] * 4


def byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|begin|>", "<|end|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", pair="<|begin|> $A $B:1", special_tokens=[("<|begin|>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin|>", eos_token="<|end|>",
                                   pad_token="<|pad|>")
    fast.chat_template = CHAT
    return fast


def sentencepiece_tokenizer():
    """Gemma's kind: BPE over text with spaces spelled "▁", byte fallback, no pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=420, special_tokens=specials + [f"<0x{i:02X}>" for i in range(256)]))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


def config(family: str, vocab: int, width: int = 64, layers: int = 2, **overrides):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    ffn = width + width // 2
    common = dict(vocab_size=vocab, hidden_size=width, intermediate_size=ffn, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)
    common.update({k: overrides.pop(k) for k in list(overrides) if k in common})
    if family == "llama":
        return LlamaConfig(**common, bos_token_id=0, eos_token_id=1, pad_token_id=2, **overrides)
    if family == "mistral":
        return MistralConfig(**common, bos_token_id=0, eos_token_id=1, pad_token_id=2, sliding_window=None, **overrides)
    if family == "qwen2":
        return Qwen2Config(**common, bos_token_id=0, eos_token_id=1, pad_token_id=2, **overrides)
    if family == "gemma3_text":
        head_dim = 256  # real Gemma 3's; transformers' GGUF loader assumes query_pre_attn_scalar = 256
        return Gemma3TextConfig(**{**common, "num_key_value_heads": 1, "tie_word_embeddings": True}, head_dim=head_dim,
                                query_pre_attn_scalar=head_dim, sliding_window=32, pad_token_id=0, eos_token_id=1,
                                bos_token_id=2, **overrides)
    raise ValueError(family)


def build(family: str, folder: Path, width: int = 64, layers: int = 2, extra_rows: int = 4, **overrides):
    """Save a random ``family`` model with ``extra_rows`` unused embedding rows; return it (eval)."""
    from transformers import AutoModelForCausalLM

    tokenizer = sentencepiece_tokenizer() if family == "gemma3_text" else byte_level_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config(family, len(tokenizer) + extra_rows, width, layers, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # Gemma's norms scale by 1 + w, the others by w
                p.normal_(0.0 if family == "gemma3_text" or not name.endswith("norm.weight") else 1.0, 0.1)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()
