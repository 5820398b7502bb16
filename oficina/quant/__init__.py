"""Weight quantization, in PyTorch and as GGUF files.

  linear.py       the weight-only int8/int4 linear layer (``QuantLinear``) that packed models,
                  evaluation and QLoRA all run on; its schemes register in ``SCHEMES``
  torch_quant.py  a whole model to fp16/bf16/int8/int4, saved packed and loaded back
  (the GGML tensor types, K-quant kernels and llama.cpp file types are format code: formats/ggml/)
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
