"""Figures as PNG files (`png_figure`), and the training-curve figure of a run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lrcn.fileio import atomic_write


@contextmanager
def png_figure(path: Path, *args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``with png_figure(path, ...) as (fig, axes):`` draw; on leaving, the figure is laid
    out and written atomically to `path` as a PNG, then closed. The arguments are
    ``plt.subplots``'s; matplotlib is imported here, on its file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Write a PNG with training loss and validation accuracy per epoch."""
    with png_figure(path, 1, 2, figsize=(10, 4)) as (fig, (ax_loss, ax_acc)):
        _draw_curves(history, ax_loss, ax_acc)


def _draw_curves(history: list[dict[str, Any]], ax_loss: Any, ax_acc: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] + 1 for h in history]
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
