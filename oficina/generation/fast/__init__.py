"""Our own lean decoder for the Llama family (Llama, SmolLM, Mistral, Qwen2/3) and Gemma 3, over
packed int4/int8/bf16 weights with a static per-slot KV cache (see ``model.py`` for the forward,
``weights.py`` for the packed forms, ``load.py`` for GGUF / safetensors and the cache)."""

from .config import FastConfig, Unsupported  # noqa: F401
from .runner import FastRunner, cpu_has_bf16  # noqa: F401
