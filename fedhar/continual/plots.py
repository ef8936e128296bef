"""Plots of a continual run: the accuracy matrix as heatmaps, and every domain's score per round."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_accuracy_matrix(matrices: dict[str, list[list[float]]], domains: list[str], path, title: str) -> Path:
    """One heatmap per matrix (rows: after stage i, columns: domain j), on one 0..1 scale so panels compare."""
    path = Path(path)
    n = max(len(matrices), 1)
    size = max(3.0, 0.9 * len(domains) + 1.5)
    fig, axes = plt.subplots(1, n, figsize=(size * n + 1.5, size), squeeze=False, layout="constrained")
    image = None
    for k, (ax, (name, R)) in enumerate(zip(axes[0], matrices.items())):
        a = np.asarray(R, dtype=float).reshape(-1, len(domains)) if len(R) else np.zeros((0, len(domains)))
        image = ax.imshow(a, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                value = a[i, j]
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9,
                            color="white" if value < 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(len(domains)), domains, rotation=30, ha="right")
        ax.set_yticks(range(a.shape[0]), [f"after {d}" for d in domains[: a.shape[0]]])
        ax.set(xlabel="domain j", title=name)
        if k == 0:  # the row labels say it on every panel; one axis title is enough
            ax.set_ylabel("after stage i")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.9)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_domain_curves(
    rounds: list[int],
    scores: dict[str, list[float | None]],
    boundaries: list[float],
    path,
    title: str,
    ylabel: str = "test macro-F1",
) -> Path:
    """Each domain's score per round, stage boundaries dashed: forgetting shows as a drop after a boundary."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (domain, values) in enumerate(scores.items()):
        y = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        ax.plot(rounds, y, marker="o", markersize=3, color=f"C{k}", label=domain)  # NaN: a gap in the line
    for x in boundaries:
        ax.axvline(x, color="grey", ls="--", lw=1)
    ax.set(xlabel="round", ylabel=ylabel, ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if scores:
        ax.legend(title="domain")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
