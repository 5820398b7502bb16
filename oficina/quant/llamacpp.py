"""llama.cpp through llama-cpp-python (the optional ``llamacpp`` extra): the reference our GGUF
files and quantizers are checked against, and the engine their speed is measured on.

    reason = missing()                        # None when llama-cpp-python is importable
    ref_bytes = reference_quantize(w, "Q4_K") # ggml's own quantizer on the same rows
    quantize_file("m-f32.gguf", "m-q4km.gguf", "Q4_K_M")   # llama-quantize, in process
    llm = open_model("m.gguf")                # a llama_cpp.Llama that survives its first eval
    greedy(llm, ids, 16)                      # argmax decoding, token ids

This is a measuring instrument, not oficina's way to run GGUF models (that is the torch engine
on the dequantized weights; a llama.cpp engine belongs in ``generation/``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import OficinaError
from ..formats.ggml.mixes import get

__all__ = ["decode_speed", "greedy", "missing", "open_model", "quantize_file", "reference_quantize"]


def missing() -> str | None:
    """Why llama.cpp cannot be used here, or None when it can."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama-cpp-python is not installed (pip install 'oficina[llamacpp]'): {e}"
    return None


def _llama_cpp():
    reason = missing()
    if reason:
        raise OficinaError(reason)
    import llama_cpp

    return llama_cpp


_ggml = None


def _ggml_base() -> ctypes.CDLL:
    """libggml-base from the llama_cpp package: ``ggml_quantize_chunk`` is the function
    llama-quantize calls for every tensor (src/llama-quant.cpp llama_tensor_quantize_impl)."""
    global _ggml
    if _ggml is None:
        llama_cpp = _llama_cpp()
        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("ggml-base.*"))
        if not candidates:
            raise OficinaError(f"no libggml-base in {lib_dir}")
        lib = ctypes.CDLL(str(candidates[0]))
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        _ggml = lib
    return _ggml


def reference_quantize(rows: np.ndarray, type_name: str) -> np.ndarray:
    """llama.cpp's bytes for float rows [n, ncols] as GGML type ``type_name`` (no importance
    matrix, as llama-quantize without --imatrix), shape [n, row_bytes]."""
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(rows, dtype=np.float32)
    n, ncols = x.shape
    out = np.zeros((n, ncols // block * size), np.uint8)
    written = _ggml_base().ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, n, ncols, None)
    if written != out.nbytes:
        raise OficinaError(f"ggml_quantize_chunk wrote {written} bytes for {type_name}, expected {out.nbytes}")
    return out


def quantize_file(src: str | Path, dst: str | Path, file_type: str, threads: int = 2) -> Path:
    """Run llama-quantize's ``llama_model_quantize`` on a GGUF file (F32/F16 in, ``file_type``
    such as "Q4_K_M" out)."""
    import gguf

    llama_cpp = _llama_cpp()

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(get(file_type).ftype)
    params.nthread = threads
    with _quiet():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise OficinaError(f"llama_model_quantize failed ({rc}) on {src}")
    gguf.GGUFReader(dst)  # it wrote something readable
    return Path(dst)


def open_model(path: str | Path, n_ctx: int = 512, threads: int | None = None, logits_all: bool = True):
    """A ``llama_cpp.Llama`` for ``path``, with ``use_extra_bufts`` off: llama-cpp-python's wheel
    on some x86 machines crashes on the first eval when llama.cpp repacks weights into its extra
    CPU buffer types. ``Llama`` has no argument for it, so the default model params it asks for
    are patched while it loads."""
    llama_cpp = _llama_cpp()
    lowlevel = llama_cpp.llama_cpp
    original = lowlevel.llama_model_default_params

    def params():
        p = original()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    lowlevel.llama_model_default_params = params
    try:
        with _quiet():
            return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads or min(4, os.cpu_count() or 1),
                                   logits_all=logits_all, verbose=False)
    finally:
        lowlevel.llama_model_default_params = original


def greedy(llm, ids: Sequence[int], n: int, stop: Sequence[int] = ()) -> list[int]:
    """Argmax decoding from prompt ``ids``: up to ``n`` new token ids, ending before a ``stop``
    id (as oficina's engine reports its tokens)."""
    llm.reset()
    llm.eval(list(ids))
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if tok in stop:
            break
        out.append(tok)
        llm.eval([tok])
    return out


def decode_speed(llm, ids: Sequence[int], n: int = 32, repeats: int = 3) -> float:
    """Tokens per second of one-token decode steps after prompt ``ids`` (prompt time excluded),
    the best of ``repeats`` runs: on a shared machine the fastest run is the least disturbed."""
    best = 0.0
    for _ in range(repeats):
        llm.reset()
        llm.eval(list(ids))
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        for _ in range(2):  # warm-up: the first steps pay for buffer allocation
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(n):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        best = max(best, n / (time.perf_counter() - t0))
    return best


@contextlib.contextmanager
def _quiet():
    """llama.cpp logs to stderr from C; keep the terminal for our own progress."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
