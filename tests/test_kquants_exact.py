"""Every GGML type oficina writes, byte for byte against llama.cpp's own quantizer.

Two references, so the check runs everywhere:
- with llama-cpp-python installed (the ``llamacpp`` extra), ``ggml_quantize_chunk`` from its
  libggml-base (what llama-quantize calls per tensor) on the same rows, for several kinds of data;
- without it, the sha256 of llama.cpp's bytes for ``golden_rows()``, recorded from that library
  (llama-cpp-python 0.3.36, ggml 0.25.3) with ``python tests/test_kquants_exact.py``.

The rows are made by integer arithmetic (a 64-bit LCG), not by a NumPy random generator, so they
are the same bits on every NumPy version.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

from oficina.formats.ggml.types import TYPES
from oficina.quant import llamacpp

NO_LLAMA_CPP = llamacpp.missing()
needs_llama_cpp = pytest.mark.skipif(NO_LLAMA_CPP is not None, reason=f"llama.cpp reference unavailable: {NO_LLAMA_CPP}")


def _uniform(n: int, seed: int) -> np.ndarray:
    """n floats in [0, 1) from a 64-bit LCG (Knuth's MMIX constants) and a xorshift mix."""
    z = np.arange(n, dtype=np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % (1 << 64))
    z = z * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
    z ^= z >> np.uint64(29)
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(32)
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def golden_rows(cols: int = 512) -> np.ndarray:
    """16 rows of ``cols`` float32 with the cases the searches branch on: plain, heavy-tailed,
    one-signed, tiny, huge, sparse, an outlier, all zero, constant, half zero, few levels."""
    u = [_uniform(cols, s) for s in range(16)]
    rows = [
        (u[0] - 0.5) * 0.04,                                   # like a weight matrix row
        np.sign(u[1] - 0.5) * (u[2] ** 4) * 0.3,               # heavy tails
        u[3] * 2.0 + 0.5,                                      # all positive: min > 0
        -(u[4] * 0.1) - 0.01,                                  # all negative
        (u[5] - 0.5) * 1e-20,                                  # tiny
        (u[6] - 0.5) * 1e4,                                    # huge
        np.where(u[7] < 0.05, u[8] - 0.5, 0.0),                # sparse
        np.where(np.arange(cols) == 77, 40.0, u[9] - 0.5),     # one outlier
        np.zeros(cols),                                        # all zero
        np.full(cols, 0.37),                                   # constant
        np.concatenate([np.zeros(cols // 2), u[10][: cols - cols // 2] - 0.5]),  # half zero
        np.round((u[11] - 0.5) * 6),                           # a few integer levels
        (u[12] - 0.5) * (u[13] - 0.5) * 0.5,                   # peaked at zero
        np.sin(np.arange(cols) * 0.37) * 0.02,                 # smooth
        (u[14] - 0.5) * 0.02 + 0.01,                           # offset
        (u[15] ** 8 - 0.01) * 0.2,                             # skewed
    ]
    return np.stack(rows).astype(np.float32)


# sha256 of llama.cpp's bytes for golden_rows() (ggml_quantize_chunk, no importance matrix)
GOLDEN = {
    "F16": "27ecc0e9971bac05216932480cb4953bec0376436b917784dcdd76bd1a1ba4d6",
    "BF16": "70bc08c32bbc99de6c4247770dca5d7303478e9f4681bc31670e0b4bd461ec3a",
    "Q8_0": "6a2dae261bc4b43d39fcfae4aa9728112e16386bae827ee9d170d43049fba2aa",
    "Q4_0": "187dffcccb60479d3a9d2dc50e63fdbb40e954ee3f08e850e9f222cdd4374f4a",
    "Q4_1": "16522a96c97f1472730fa42d496845eff625ef89150fed2d71beb262de3195b8",
    "Q5_0": "1bd62f12e8d8c3cc08d61025fd52b074357f3a34b5856aea9289891fc83e93b7",
    "Q5_1": "cb62f653322c483c5320a46a7e91835680354a7089c0867978346d84b429d09c",
    "Q2_K": "a54ed8006e008b9da2c76c01ba2387b047590ad14030f1e1ab7899040680fb55",
    "Q3_K": "9b298a68640b0548b87eb1ed2e7388d8f4954ede52c2623cfeada8b90952a39b",
    "Q4_K": "22ca56a9a7e66023a7ace7bf31128538bac713dfbd8add6c54e5ef5a60d0a733",
    "Q5_K": "71288fc9d2b7475165cfa1608d4494c18afb80a25de2565f191d079661ba6f7b",
    "Q6_K": "43699a3b57beb70519e56b64f73eb63cf0741989a50b66cc0c5847290ff6e450",
}

QUANTIZED = [name for name in TYPES if name not in ("F32",)]


@pytest.mark.parametrize("name", QUANTIZED)
def test_golden_bytes(name):
    """Our bytes for golden_rows() hash to what llama.cpp's did."""
    if name not in GOLDEN:
        pytest.fail(f"no recorded llama.cpp digest for {name}: run python tests/test_kquants_exact.py")
    ours = TYPES[name].quantize(golden_rows())
    assert hashlib.sha256(ours.tobytes()).hexdigest() == GOLDEN[name]


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "golden": golden_rows(),
        "normal": rng.standard_normal((64, 512)).astype(np.float32) * 0.02,
        "student-t": (rng.standard_t(2, (64, 256)) * 0.01).astype(np.float32),
        "constant-blocks": np.repeat(rng.standard_normal((8, 1)), 512, axis=1).astype(np.float32),
        "sparse": (rng.standard_normal((32, 256)) * (rng.random((32, 256)) < 0.03)).astype(np.float32),
        "ints": rng.integers(-4, 5, (32, 256)).astype(np.float32),
    }


@needs_llama_cpp
@pytest.mark.parametrize("name", QUANTIZED)
@pytest.mark.parametrize("case", list(_cases()))
def test_same_bytes_as_llama_cpp(name, case):
    x = _cases()[case]
    ours = TYPES[name].quantize(x)
    theirs = llamacpp.reference_quantize(x, name)
    assert ours.shape == theirs.shape
    bad = np.flatnonzero((ours != theirs).any(axis=1))
    assert bad.size == 0, f"{bad.size} of {len(x)} rows differ, first {bad[0]}"


@needs_llama_cpp
def test_golden_digests_are_llama_cpps():
    """The recorded digests are still what the installed llama.cpp gives."""
    for name, digest in GOLDEN.items():
        assert hashlib.sha256(llamacpp.reference_quantize(golden_rows(), name).tobytes()).hexdigest() == digest, name


def test_every_k_quant_is_covered():
    assert {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"} <= set(QUANTIZED)


if __name__ == "__main__":  # record GOLDEN from the installed llama.cpp
    if NO_LLAMA_CPP:
        sys.exit(NO_LLAMA_CPP)
    for name in QUANTIZED:
        print(f'    "{name}": "{hashlib.sha256(llamacpp.reference_quantize(golden_rows(), name).tobytes()).hexdigest()}",')
