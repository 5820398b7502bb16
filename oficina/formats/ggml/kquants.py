"""The K-quants (Q2_K .. Q6_K): llama.cpp's reference quantizers, vectorised over blocks in numpy.

A port of ``quantize_row_q{2,3,4,5,6}_K_ref`` and their helpers (``nearest_int``,
``make_qx_quants``, ``make_q3_quants``, ``make_qkx2_quants``) from ggml/src/ggml-quants.c (ggml
0.25, the library llama-cpp-python 0.3.36 ships). These are the functions ``llama-quantize`` runs
when no importance matrix is given (``quantize_q4_K(..., quant_weights=NULL)`` calls the _ref
one), and tests/test_kquants_exact.py checks that the bytes here equal theirs.

A super-block is 256 weights (QK_K) cut into 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 8 of 32
(Q4_K, Q5_K). Each sub-block gets a float scale (and, for the "x2" types, a min) by a small
search, then the 8 or 16 sub-block scales are themselves quantized to 4-8 bits against one fp16
super-scale ``d`` (and ``dmin``), and the weights are requantized with the scales as stored.

How the bytes stay identical to the C code:
- everything is float32 and each ``+ - * /`` is the one C does, in C's order (ggml-base is built
  without FMA contraction: its quantizers compile to mulss/addss, no vfmadd);
- sums are accumulated one element at a time, left to right, as the C loops do (``_csum``;
  ``np.sum`` adds pairwise, which rounds differently, and ``np.add.accumulate`` down axis 0 is
  exact but a hundred times slower than a loop of vector adds);
- ``nearest_int`` is the same bit trick (round half to even by adding 1.5 * 2**23), so it is
  also wrong in the same way where C's is (|x| > 2**22);
- what is vectorised is the independent sub-blocks; the loops over positions inside a sub-block
  stay loops. Arrays are kept position-major, ``[n, N]`` for N sub-blocks of n weights, so
  ``x[i]`` is one contiguous row.
"""

from __future__ import annotations

import numpy as np

F = np.float32
QK_K = 256
GROUP_MAX_EPS = F(1e-15)

__all__ = ["QK_K", "quantize_q2_k", "quantize_q3_k", "quantize_q4_k", "quantize_q5_k", "quantize_q6_k"]


def nearest_int(v: np.ndarray) -> np.ndarray:
    """Round half to even through the float32 mantissa (ggml-quants.c ``nearest_int``)."""
    val = (v.astype(F, copy=False) + F(12582912.0)).astype(F, copy=False)
    return (val.view(np.int32) & 0x007FFFFF) - 0x00400000


def _csum(terms: np.ndarray) -> np.ndarray:
    """``float s = 0; for (i...) s += terms[i];`` for each column of [n, N]."""
    s = np.zeros(terms.shape[1], F)
    for row in terms:
        s = s + row
    return s


def _fp16(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 then back: round to nearest even, as stored in the block."""
    return v.astype(np.float16)


def _absmax(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(amax, the signed value at the first |max|) along ``axis``, as
    ``if (ax > amax) { amax = ax; max = x[i]; }`` from 0 finds them (argmax takes the first)."""
    i = np.expand_dims(np.abs(x).argmax(axis=axis), axis)
    mx = np.take_along_axis(x, i, axis=axis).squeeze(axis)
    amax = np.abs(mx)
    return amax, np.where(amax > 0, mx, F(0))


# -- sub-block scale searches ----------------------------------------------------------------------

def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric scale for ``x`` [n, N] with codes in [-nmax, nmax-1], weighted by x**2
    (``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)``): try 19 scales around nmax/max and
    keep the one with the best weighted least-squares fit. Returns (scale [N], L [n, N] in
    [0, 2 nmax))."""
    amax, mx = _absmax(x)
    w = x * x

    def fit(iscale):
        l = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        lf = l.astype(F)
        return l, _csum(w * x * lf), _csum(w * lf * lf)

    l, sumlx, suml2 = fit(F(-nmax) / mx)
    L = l + nmax
    scale = np.where(suml2 != 0, sumlx / suml2, F(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = fit(-(F(nmax) + F(0.1) * F(step)) / mx)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better, l + nmax, L)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero, F(0), scale), np.where(zero, 0, L)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)``: start from nmax/max, then move single
    codes while that improves the x**2-weighted fit (up to 5 passes). A pass that changes
    nothing leaves the state as it was, so running all 5 passes for every sub-block equals C's
    early ``break``. Returns (scale [N], L [n, N] in [0, 2 nmax))."""
    amax, mx = _absmax(x)
    n, N = x.shape
    L = np.clip(nearest_int((F(-nmax) / mx) * x), -nmax, nmax - 1)
    w = x * x
    lf = L.astype(F)
    sumlx, suml2 = _csum(w * x * lf), _csum(w * lf * lf)
    for _ in range(5):
        for i in range(n):
            li = L[i].astype(F)
            slx = sumlx - w[i] * x[i] * li
            sl2 = suml2 - w[i] * li * li
            new_l = np.clip(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
            nl = new_l.astype(F)
            slx_new = slx + w[i] * x[i] * nl
            sl2_new = sl2 + w[i] * nl * nl
            take = ((slx > 0) & (new_l != L[i]) & (sl2_new > 0)
                    & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
            L[i] = np.where(take, new_l, L[i])
            sumlx = np.where(take, slx_new, sumlx)
            suml2 = np.where(take, sl2_new, suml2)
    zero = amax < GROUP_MAX_EPS
    scale = np.where(suml2 > 0, sumlx / suml2, F(0))
    return np.where(zero, F(0), scale), np.where(zero, 0, L + nmax)


def _weighted_error(scale, L, mn, x, w, use_mad):
    diff = scale * L.astype(F) + mn - x
    return _csum(w * (np.abs(diff) if use_mad else diff * diff))


def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric scale and min for ``x`` [n, N], codes in [0, nmax], weighted by ``w``
    (``make_qkx2_quants``): from (max - min)/nmax, try nstep+1 code assignments, fit scale and
    min to each by weighted least squares, keep the best. Returns (scale, -min, L)."""
    n, N = x.shape
    # the first strict new min / max from x[0] on; the sums start from element 0, not from 0
    mn = np.take_along_axis(x, x.argmin(axis=0)[None], axis=0)[0]
    mx = np.take_along_axis(x, x.argmax(axis=0)[None], axis=0)[0]
    wx = w * x
    sum_w, sum_x = w[0].copy(), wx[0].copy()
    for i in range(1, n):
        sum_w = sum_w + w[i]
        sum_x = sum_x + wx[i]
    mn = np.where(mn > 0, F(0), mn)
    flat = mx == mn
    first_min = mn
    iscale = F(nmax) / (mx - mn)
    scale = F(1) / iscale
    L = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
    best = _weighted_error(scale, L, mn, x, w, use_mad)
    for step in range(nstep + 1):
        # min is the best fit so far: the range moves with it, as in C
        iscale = (F(rmin) + F(rdelta) * F(step) + F(nmax)) / (mx - mn)
        Laux = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
        la = Laux.astype(F)
        wl = w * la
        sum_l, sum_l2, sum_xl = _csum(wl), _csum(wl * la), _csum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        positive = this_min > 0
        this_min = np.where(positive, F(0), this_min)
        this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        err = _weighted_error(this_scale, Laux, this_min, x, w, use_mad)
        better = (D > 0) & (err < best)
        L = np.where(better, Laux, L)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    return np.where(flat, F(0), scale), np.where(flat, -first_min, -mn), np.where(flat, 0, L)


# -- packing helpers -------------------------------------------------------------------------------

def _subblocks(blocks: np.ndarray, n: int) -> np.ndarray:
    """[nb, 256] -> [n, nb * 256/n], position-major (sub-block j of block b is column b*256/n + j)."""
    return np.ascontiguousarray(blocks.reshape(-1, n).T)


def _blocks(sub: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of ``_subblocks``: [n, nb * 256/n] -> [nb, 256]."""
    return sub.T.reshape(nb, QK_K)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """[nb, 256] codes in 0..3 -> [nb, 64]: byte l of each 128-half holds L[l], L[l+32], L[l+64], L[l+96]."""
    q = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(-1, 64)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins [nb, 8] -> the 12-byte layout get_scale_min_k4 reads."""
    s = np.zeros((ls.shape[0], 12), np.uint8)
    s[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    s[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    s[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return s


def _requantize(x, L, d, dm, lo, hi):
    """Codes for x with the stored scales: nearest_int((x + dm)/d) clipped; where d == 0 the
    codes from the search stay (C's ``if (!d) continue;``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        new = np.clip(nearest_int((x + dm[..., None]) / d[..., None]), lo, hi)
    return np.where(d[..., None] != 0, new, L)


def _running_max(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over axis 1 of [nb, m]: (max with ``if (v > m) m = v`` from 0, same for |v| keeping the sign)."""
    mx = v.max(axis=1)
    return np.where(mx > 0, mx, F(0)), _absmax(v, axis=1)[1]


# -- the five types --------------------------------------------------------------------------------

def _qkx_k4(blocks: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Q4_K / Q5_K (shared by quantize_row_q4_K_ref and _q5_K_ref): 8 sub-blocks of 32 with
    weights av_x + |x|, six-bit scales and mins. Returns (d, dmin, scales[12], L [nb, 256])."""
    nb = blocks.shape[0]
    x = _subblocks(blocks, 32)                                               # [32, nb*8]
    sum_x2 = np.zeros(x.shape[1], F)
    for xi in x:
        sum_x2 = sum_x2 + xi * xi
    av_x = np.sqrt(sum_x2 / F(32))
    scales, mins, L = make_qkx2_quants(x, av_x + np.abs(x), nmax, rmin, rdelta, nstep, use_mad=False)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale, _ = _running_max(scales)
    max_min, _ = _running_max(mins)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F(63) / max_scale, F(0))
        inv_min = np.where(max_min > 0, F(63) / max_min, F(0))
    # uint8_t ls = nearest_int(...): the int wraps to a byte before MIN(63, ls)
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d = _fp16(max_scale / F(63))
    dmin = _fp16(max_min / F(63))
    sub_d = d.astype(F)[:, None] * ls.astype(F)                              # [nb, 8]
    sub_m = dmin.astype(F)[:, None] * lm.astype(F)
    L = _blocks(L, nb).reshape(nb, 8, 32)
    L = _requantize(blocks.reshape(nb, 8, 32), L, sub_d, sub_m, 0, nmax).reshape(nb, QK_K)
    return d, dmin, _pack_scales_k4(ls, lm), L


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """[nb, 256] float32 -> [nb, 144] bytes: d, dmin (fp16), scales[12], qs[128] (block_q4_K)."""
    d, dmin, scales, L = _qkx_k4(blocks, 15, -1.0, 0.1, 20)
    q = L.reshape(-1, 4, 2, 32).astype(np.uint8)                             # 64-runs, low/high nibble
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qs], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """[nb, 256] -> [nb, 176]: d, dmin, scales[12], qh[32] (fifth bits), qs[128] (block_q5_K)."""
    d, dmin, scales, L = _qkx_k4(blocks, 31, -0.5, 0.1, 15)
    q = L.reshape(-1, 4, 2, 32).astype(np.uint8)
    qs = ((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    # bit 2k of qh[j] is the fifth bit of L[64k + j], bit 2k+1 that of L[64k + 32 + j]
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)
    qh = np.bitwise_or.reduce(((q >> 4) & 1) << shifts, axis=(1, 2)).astype(np.uint8)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), scales, qh, qs], axis=1)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """[nb, 256] -> [nb, 210]: ql[128], qh[64], scales[16] (int8), d (block_q6_K)."""
    nb = blocks.shape[0]
    scales, L = make_qx_quants(_subblocks(blocks, 16), 32)
    scales = scales.reshape(nb, 16)
    _, max_scale = _running_max(scales)
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F(-128) / max_scale
        d = _fp16(F(1) / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales))
    d = np.where(zero, np.float16(0), d)
    sc = np.where(zero[:, None], 0, sc).astype(np.int8)
    sub_d = d.astype(F)[:, None] * sc.astype(F)
    with np.errstate(divide="ignore", invalid="ignore"):
        new = np.clip(nearest_int(blocks.reshape(nb, 16, 16) / sub_d[..., None]), -32, 31) + 32
    L = _blocks(L, nb).reshape(nb, 16, 16)
    L = np.where(sub_d[..., None] != 0, new, L)
    L = np.where(zero[:, None, None], 0, L).reshape(nb, 2, 4, 32).astype(np.uint8)  # [half, quarter, l]
    ql = np.concatenate([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4),
                         L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.view(np.uint8).reshape(-1, 2)], axis=1)


def quantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    """[nb, 256] -> [nb, 110]: hmask[32], qs[64], scales[12] (6-bit, offset 32), d (block_q3_K)."""
    nb = blocks.shape[0]
    scales, L = make_q3_quants(_subblocks(blocks, 16), 4)
    scales = scales.reshape(nb, 16)
    _, max_scale = _running_max(scales)
    has = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F(-32) / max_scale
        l = nearest_int(iscale[:, None] * scales).astype(np.int8)            # int8_t l = nearest_int(...)
        d = _fp16(F(1) / iscale)
    l = (np.clip(l, -32, 31) + 32).astype(np.uint8)                          # [nb, 16] in 0..63
    l = np.where(has[:, None], l, 0).astype(np.uint8)
    d = np.where(has, d, np.float16(0))
    packed = np.zeros((nb, 12), np.uint8)
    packed[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    high = (l >> 4).reshape(nb, 4, 4)                                        # [j//4, j%4]
    packed[:, 8:12] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    sub_d = d.astype(F)[:, None] * (l.astype(np.int16) - 32).astype(F)       # the stored scales, unpacked
    with np.errstate(divide="ignore", invalid="ignore"):
        new = np.clip(nearest_int(blocks.reshape(nb, 16, 16) / sub_d[..., None]), -4, 3) + 4
    L = _blocks(L, nb).reshape(nb, 16, 16)
    L = np.where(sub_d[..., None] != 0, new, L).reshape(nb, QK_K).astype(np.uint8)
    # the third bit of L[j] goes to bit j//32 of hmask[j%32]
    hbit = (L > 3).astype(np.uint8).reshape(nb, 8, 32) << np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    hmask = np.bitwise_or.reduce(hbit, axis=1).astype(np.uint8)
    L = np.where(L > 3, L - 4, L)
    return np.concatenate([hmask, _pack_2bit(L), packed, d.view(np.uint8).reshape(-1, 2)], axis=1)


def quantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    """[nb, 256] -> [nb, 84]: scales[16] (4-bit scale | 4-bit min), qs[64], d, dmin (block_q2_K)."""
    nb = blocks.shape[0]
    x = _subblocks(blocks, 16)
    scales, mins, L = make_qkx2_quants(x, np.abs(x), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
    max_scale, _ = _running_max(scales)
    max_min, _ = _running_max(mins)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(max_scale[:, None] > 0, nearest_int((F(15) / max_scale)[:, None] * scales), 0)
        lm = np.where(max_min[:, None] > 0, nearest_int((F(15) / max_min)[:, None] * mins), 0)
    sc = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(np.uint8)                 # y[i].scales[j] |= (l << 4)
    d = np.where(max_scale > 0, _fp16(max_scale / F(15)), np.float16(0))
    dmin = np.where(max_min > 0, _fp16(max_min / F(15)), np.float16(0))
    sub_d = d.astype(F)[:, None] * (sc & 0xF).astype(F)
    sub_m = dmin.astype(F)[:, None] * (sc >> 4).astype(F)
    L = _blocks(L, nb).reshape(nb, 16, 16)
    L = _requantize(blocks.reshape(nb, 16, 16), L, sub_d, sub_m, 0, 3).reshape(nb, QK_K)
    return np.concatenate([sc, _pack_2bit(L), d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2)], axis=1)
