"""Training-curve figure drawn from the metrics log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrcn.fileio import atomic_write


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Write a PNG with training loss and validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(title="training loss (BCE, per question)", xlabel="epoch", ylabel="loss")
    with_acc = [h for h in history if h.get("val") and "overall" in h["val"]]
    if with_acc:
        ax_acc.plot([h["epoch"] + 1 for h in with_acc], [h["val"]["overall"] for h in with_acc],
                    marker="o", label="overall")
        for answer_type in with_acc[-1]["val"].get("per_answer_type", {}):
            ax_acc.plot([h["epoch"] + 1 for h in with_acc],
                        [h["val"]["per_answer_type"].get(answer_type) for h in with_acc],
                        linestyle="--", label=answer_type)
        ax_acc.legend()
    ax_acc.set(title="validation VQA accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
