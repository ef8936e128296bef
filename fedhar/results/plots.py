"""PNG plots a user opens next to the numbers: learning curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_learning_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Train/validation loss and validation macro-F1 per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    if any("val_loss" in h for h in history):
        ax_loss.plot(epochs, [h.get("val_loss", np.nan) for h in history], marker="o", label="validation")
        ax_f1.plot(epochs, [h.get("val_macro_f1", np.nan) for h in history], marker="o", color="C2", label="val macro-F1")
        ax_f1.plot(epochs, [h.get("val_accuracy", np.nan) for h in history], marker=".", color="C3", label="val accuracy")
    ax_f1.plot(epochs, [h["train_accuracy"] for h in history], ls="--", color="C0", label="train accuracy")
    # the training loss is what was minimised (label smoothing, regulariser included); validation: plain cross-entropy
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (train: the training objective; val: cross-entropy)")
    ax_f1.set(xlabel="epoch", ylabel="score", ylim=(0, 1.02), title="accuracy / macro-F1")
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion_matrix(cm: list[list[int]] | np.ndarray, label_names: list[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts in each cell."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(label_names)
    fig, ax = plt.subplots(figsize=(1.1 * k + 3, 1.0 * k + 2))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), label_names, rotation=45, ha="right")
    ax.set_yticks(range(k), label_names)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"{title}\n" * bool(title) + "row-normalised (numbers: windows)", fontsize=9)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
