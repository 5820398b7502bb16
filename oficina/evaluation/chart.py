"""The picture of a Report: one panel per (task, metric), one bar per model, the 95% interval as
an error bar, the first model's value as a dashed reference line."""

from __future__ import annotations

import math
from pathlib import Path

from .compare import Report

COLUMNS = 3


def draw(report: Report, path: Path, every: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = report.columns(every)
    labels = [m.label for m in report.models]
    n = len(cols)
    ncols = min(COLUMNS, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (task, name) in zip(axes.flat, cols):
        ms = [report.metric(label, task, name) for label in labels]
        known = [m for m in ms if m is not None]
        better = known[0].higher_is_better if known else True
        scale = known[0].scale if known else None
        lo = 0.0 if all(m.value >= 0 for m in known) else None
        values = [m.value if m else float("nan") for m in ms]
        # error bars, clipped to the metric's range (a normal interval can pass 0 or 1)
        down, up = [], []
        for m in ms:
            e = m.ci95 if m and m.ci95 is not None else 0.0
            v = m.value if m else 0.0
            down.append(min(e, v - lo) if lo is not None else e)
            up.append(min(e, scale - v) if scale is not None else e)
        x = list(range(len(labels)))
        ax.bar(x, values, yerr=[down, up] if any(down + up) else None, capsize=4,
               color=[colors[i % len(colors)] for i in x], edgecolor="black", linewidth=0.5,
               error_kw={"linewidth": 1})
        if len(labels) > 1 and not math.isnan(values[0]):
            ax.axhline(values[0], color="grey", linestyle="--", linewidth=0.8)
        for i, v in enumerate(values):
            if not math.isnan(v):
                ax.annotate(f"{v:.3g}", (i, v + up[i]), textcoords="offset points",
                            xytext=(0, 3), ha="center", va="bottom", fontsize=8)
        top = max((v + u for v, u in zip(values, up) if not math.isnan(v)), default=1.0)
        if scale is not None:
            top = scale
        ax.set_ylim(lo if lo is not None else None, (top or 1.0) * 1.12)
        ax.set_title(f"{task}  {name}", fontsize=10)
        ax.set_ylabel(f"{name} ({'higher' if better else 'lower'} is better)", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=20 if len(labels) > 2 else 0,
                           ha="right" if len(labels) > 2 else "center", fontsize=8)
        ax.set_xlabel("model", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"oficina eval: {', '.join(labels)}{_bars_note(report, cols)}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars_note(report: Report, cols) -> str:
    """Say which panels have error bars: perplexity and other corpus totals carry no interval."""
    def interval(task, name):
        return any((m := report.metric(x.label, task, name)) is not None and m.ci95 is not None
                   for x in report.models)

    bare = sorted({name for task, name in cols if not interval(task, name)})
    if len(bare) == len({name for _, name in cols}):
        return ""
    return "  (error bars: 95% interval" + (f"; none for {', '.join(bare)})" if bare else ")")
