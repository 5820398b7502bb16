"""Quantizing a registry model, and measuring what it costs: the workflows. What they stand on
lives below: the torch int8/int4 layers and packed folders in models/ (``quant_linear.py``,
``torch_quant.py``: the loader reads packed folders), the GGML tensor types, K-quant kernels and
llama.cpp file types in formats/ggml/.

  convert.py      registry model -> packed model, GGUF file, or create --quantize
  report.py       size, perplexity, KL divergence, top-1 agreement and speed per type
  llamacpp.py     llama.cpp (optional) as the reference quantizer and the GGUF speed engine
"""

__all__ = ["SCHEMES", "QuantLinear", "Scheme", "dequantize_model", "quantize_model"]


def __getattr__(name):
    # lazy: quant_linear.py imports torch (the names stay here for the code and tests that
    # import them from oficina.quant)
    if name in __all__:
        from ..models import quant_linear

        return getattr(quant_linear, name)
    raise AttributeError(f"module 'oficina.quant' has no attribute {name!r}")
