"""Tiny random models of each family, built in the test and saved as Hugging Face folders."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The cat sat on the sofa while the dog slept.",
    "O gato dorme no sofá. O céu é azul.",
    "Language models predict the next token from the previous ones.",
    "Paris is the capital of France; Lisbon is the capital of Portugal.",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences (a PreTrainedTokenizerFast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _configs(vocab: int) -> dict:
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    return {
        "llama": LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, bos_token_id=0, eos_token_id=1,
                             pad_token_id=2, tie_word_embeddings=False),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=48, n_layer=2, n_head=4, n_positions=128,
                           bos_token_id=0, eos_token_id=1),
        "bert": BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=64),
        "t5": T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                       num_decoder_layers=2, num_heads=4, decoder_start_token_id=2,
                       pad_token_id=2, eos_token_id=1),
    }


# family -> (transformers class name, expected ModelInfo fields)
EXPECTED = {
    "llama": ("LlamaForCausalLM", dict(kind="decoder-only", layers=2, heads=4, kv_heads=2,
                                       head_dim=16, context_length=256, embedding_length=64,
                                       feed_forward_length=128)),
    "gpt2": ("GPT2LMHeadModel", dict(kind="decoder-only", layers=2, heads=4, kv_heads=4,
                                     head_dim=12, context_length=128, embedding_length=48)),
    "bert": ("BertModel", dict(kind="encoder-only", layers=2, heads=4, kv_heads=4, head_dim=8,
                               context_length=64, embedding_length=32, feed_forward_length=64)),
    "t5": ("T5ForConditionalGeneration", dict(kind="encoder-decoder", layers=2, heads=4,
                                              kv_heads=4, head_dim=8, embedding_length=32,
                                              feed_forward_length=64)),
}
FAMILIES = tuple(EXPECTED)


def build(family: str, folder: Path, seed: int = 0):
    """Save a tiny random model of ``family`` with its tokenizer to ``folder``; return the model."""
    import transformers

    tok = tokenizer()
    cfg = _configs(len(tok))[family]
    torch.manual_seed(seed)
    model = getattr(transformers, EXPECTED[family][0])(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return model


def _decoder_configs(vocab: int) -> dict:
    """Tiny random configs of each family the fast decoder supports (generation/fast/config.py),
    each using the family's distinctive parts: GQA, biases, q/k norms, tied embeddings, sandwich
    norms, sliding-window layers with their own rope base, llama3 rope scaling."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return {
        "llama": LlamaConfig(**common, tie_word_embeddings=False),
        "llama3-rope": LlamaConfig(**common, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "mistral": MistralConfig(**common, sliding_window=None),
        "qwen2": Qwen2Config(**common, tie_word_embeddings=True),
        "qwen3": Qwen3Config(**common, head_dim=32, tie_word_embeddings=True),
        "gemma3": Gemma3TextConfig(**dict(common, num_hidden_layers=3), head_dim=32,
                                   sliding_window=8, layer_types=["sliding_attention", "sliding_attention",
                                                                  "full_attention"],
                                   query_pre_attn_scalar=24, tie_word_embeddings=True),
    }


DECODERS = ("llama", "llama3-rope", "mistral", "qwen2", "qwen3", "gemma3")


def build_decoder(family: str, folder: Path | None = None, seed: int = 0):
    """A tiny random causal LM of a fast-decoder family (saved to ``folder`` when given). Norm
    weights and biases are randomised too, so the parts the decoder must get right are not
    hidden by the default ones and zeros."""
    import transformers

    tok = tokenizer()
    cfg = _decoder_configs(len(tok))[family]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.3 if "norm" in name else 0.1).add_(1.0 if "norm" in name and family != "gemma3" else 0.0)
    if folder is not None:
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
    return model


def greedy(runner, ids, n):
    """``n`` argmax tokens after ``ids`` through a runner's acquire / prefill / decode."""
    slot, reused = runner.acquire(ids)
    logits = runner.prefill(slot, ids, reused)
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = runner.decode([slot], [out[-1]])[0]
    runner.release(slot)
    return out
