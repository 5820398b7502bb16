"""The loss curve of a run, saved as a PNG beside its checkpoints."""

from __future__ import annotations

from pathlib import Path


def loss_curve(history: list[dict], val_history: list[dict], path: Path, title: str = "") -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1, label="train (per step)")
    k = max(1, len(losses) // 20)  # moving average over ~5% of the run
    if k > 1:
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", linewidth=2, label=f"train (mean of {k} steps)")
    val = [(v["step"], v["loss"]) for v in val_history if "loss" in v]
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", linewidth=2, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
