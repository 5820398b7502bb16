"""GGML's tensor types and llama.cpp's file types: pure format code (numpy and gguf-py, no
torch), read by the GGUF exporter (``formats/gguf_export.py``) and by quant/'s workflows above it.

  types.py    GGML tensor types (F32 .. Q8_0, Q2_K .. Q6_K), one class each, in ``TYPES``
  kquants.py  the K-quant quantizers, ports of llama.cpp's reference ones
  mixes.py    llama.cpp's file types ("Q4_K_M"): which type each tensor gets
"""
