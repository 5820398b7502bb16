"""PNG pictures of what ``attention`` and ``weights`` found, for a person to look at.

Figures are built with matplotlib's object API (``Figure``, no pyplot), so nothing here touches
a global backend or opens a window, and written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..formats.atomic import atomic_write
from .attention import Attention
from .weights import Histogram

MAX_TOKENS = 64  # beyond this the labels of a square map stop being readable
CMAP = "viridis"
BAR = "attention weight (square-root colour scale)"


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return path


def _labels(att: Attention, n: int) -> list[str]:
    """"␣gato 3": the token as it reads, a visible mark for the space it starts with, its index
    (the number ``--token`` takes)."""
    out = []
    for t in att.tokens[:n]:
        text = t.text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        text = "␣" + text[1:] if text.startswith(" ") and len(text) > 1 else text.replace(" ", "␣")
        out.append(f"{text} {t.index}")
    return out


def _cut(att: Attention, max_tokens: int) -> tuple[int, str]:
    n = len(att.tokens)
    if n <= max_tokens:
        return n, ""
    return max_tokens, f" — first {max_tokens} of {n} tokens shown ({n - max_tokens} cut)"


def _heatmap(ax, w: np.ndarray, att: Attention, vmax: float, inches: float, xlabels=None,
             ylabels=None):
    """Square-root colour scale: most weight often goes to the first token (an "attention
    sink", Xiao et al. 2023, arXiv:2309.17453) and a linear scale would leave the rest black.
    The colour bar's ticks stay in true weights."""
    from matplotlib.colors import PowerNorm

    if att.causal:  # the future is masked, not merely small: draw it apart
        w = np.ma.masked_where(np.triu(np.ones_like(w, dtype=bool), 1), w)
    im = ax.imshow(w, cmap=_colormap(), norm=PowerNorm(0.5, vmin=0.0, vmax=vmax),
                   interpolation="nearest")
    n = w.shape[0]
    size = max(5.0, min(10.0, 0.7 * inches * 72 / max(n, 1)))  # ~70% of a row's height
    ax.set_xticks(range(n), xlabels or [], rotation=90, fontsize=size)
    ax.set_yticks(range(n), ylabels or [], fontsize=size)
    if not xlabels:
        ax.set_xticks([])
    if not ylabels:
        ax.set_yticks([])
    return im


def _colormap():
    import matplotlib

    return matplotlib.colormaps[CMAP].with_extremes(bad="#e6e6e6")


def attention_png(att: Attention, path: str | Path, head: int | str | None = None,
                  max_tokens: int = MAX_TOKENS) -> Path:
    """One head (``head`` = index), the layer's mean (None / "mean") or all heads in a grid
    ("all"). Rows are the tokens that look (queries), columns the tokens looked at (keys)."""
    from matplotlib.figure import Figure

    n, cut = _cut(att, max_tokens)
    labels = _labels(att, n)
    where = f"{att.part}, layer {att.layer} of 0..{att.layers - 1}"
    if head == "all":
        cols = math.ceil(math.sqrt(att.heads))
        rows = math.ceil(att.heads / cols)
        cell = max(2.6, min(5.0, 0.09 * n + 1.6))
        fig = Figure(figsize=(cols * cell + 1.2, rows * cell + 0.9), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        w = att.weights[:, :n, :n].numpy()
        named = n <= 40  # labels on the outer cells only, and only while they stay readable
        for h, ax in enumerate(axes.flat):
            if h >= att.heads:
                ax.set_visible(False)
                continue
            r, c = divmod(h, cols)
            last_row = r == rows - 1 or h + cols >= att.heads
            im = _heatmap(ax, w[h], att, 1.0, cell * 0.8, labels if named and last_row else None,
                          labels if named and c == 0 else None)
            ax.set_title(f"head {h}", fontsize=10)
        fig.colorbar(im, ax=axes, shrink=0.6, label=BAR)
        fig.suptitle(f"{where}, all {att.heads} heads{cut}\nrows: query token, columns: the "
                     f"tokens it attends to (key)", fontsize=11)
        return _save(fig, path)
    h = None if head in (None, "mean") else int(head)
    w = att.map(h)[:n, :n].numpy()
    side = max(5.0, min(16.0, 0.22 * n + 3.0))
    fig = Figure(figsize=(side + 1.4, side), layout="constrained")
    ax = fig.subplots()
    im = _heatmap(ax, w, att, float(w.max()) or 1.0, side * 0.8, labels, labels)
    fig.colorbar(im, ax=ax, shrink=0.8, label=BAR)
    which = f"mean of {att.heads} heads" if h is None else f"head {h} of 0..{att.heads - 1}"
    ax.set_title(f"{where}, {which}{cut}", fontsize=11)
    ax.set_xlabel("key: the token attended to")
    ax.set_ylabel("query: the token attending")
    return _save(fig, path)


def histogram_png(hist: Histogram, path: str | Path, log: bool = False) -> Path:
    """Bars of how many values fall in each bin, with the mean and ±1 standard deviation.
    ``log``: a logarithmic count axis, which shows the rare outliers that set a quantization
    block's scale."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
    ax = fig.subplots()
    edges = np.asarray(hist.edges)
    ax.stairs(hist.counts, edges, fill=True, color="#4c72b0", alpha=0.85)
    ax.axvline(hist.mean, color="#c44e52", lw=1.2, label=f"mean {hist.mean:.4g}")
    for x in (hist.mean - hist.std, hist.mean + hist.std):
        ax.axvline(x, color="#c44e52", lw=1.0, ls="--")
    ax.plot([], [], color="#c44e52", ls="--", label=f"±1 std ({hist.std:.4g})")
    ax.set_xlabel("weight value")
    ax.set_ylabel("number of values" + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    shape = "×".join(str(d) for d in hist.shape)
    stored = f"stored as {hist.stored}" if hist.stored else "stored type unknown"
    if hist.dequantized:
        stored += ", dequantized to float32 for this plot"
    ax.set_title(f"{hist.name} [{shape}], {sum(hist.counts):,} values\n{stored}; "
                 f"min {hist.min:.4g}, max {hist.max:.4g}", fontsize=10)
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
