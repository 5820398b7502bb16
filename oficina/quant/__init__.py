"""Weight quantization, in PyTorch and as GGUF files.

  linear.py       the weight-only int8/int4 linear layer (``QuantLinear``) that packed models,
                  evaluation and QLoRA all run on; its schemes register in ``SCHEMES``
  torch_quant.py  a whole model to fp16/bf16/int8/int4, saved packed and loaded back
  gguf_types.py   GGML tensor types (F32 .. Q8_0, Q2_K .. Q6_K), one class each, in ``TYPES``
  kquants.py      the K-quant quantizers, ports of llama.cpp's reference ones
  mixes.py        llama.cpp's file types ("Q4_K_M"): which type each tensor gets
  convert.py      registry model -> packed model, GGUF file, or create --quantize
  report.py       size, perplexity, KL divergence, top-1 agreement and speed per type
  llamacpp.py     llama.cpp (optional) as the reference quantizer and the GGUF speed engine
"""

__all__ = ["SCHEMES", "QuantLinear", "Scheme", "dequantize_model", "quantize_model"]


def __getattr__(name):
    # lazy: linear.py imports torch, and `oficina --help` reads the GGUF type table (mixes.py)
    # through this package without needing it
    if name in __all__:
        from . import linear

        return getattr(linear, name)
    raise AttributeError(f"module 'oficina.quant' has no attribute {name!r}")
