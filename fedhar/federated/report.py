"""Federated run results: the summary in ``metrics.json`` and the per-round plots."""

from __future__ import annotations

import resource
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedhar.config import ExperimentConfig  # noqa: E402
from fedhar.model.har_model import HARNet, parameter_counts  # noqa: E402

METRICS = ("accuracy", "macro_f1", "loss")


def summarize(cfg: ExperimentConfig, rows: list[dict], model: HARNet, clients: list, wall_s: float) -> dict:
    """Final and best-round metrics, communication cost against full-model FedAvg, run costs."""
    counts = parameter_counts(model)
    trainable_bytes = int(sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad))
    full_bytes = int(sum(p.numel() * p.element_size() for p in model.parameters()))
    summary: dict = {
        "name": cfg.name,
        "strategy": cfg.federated.strategy,
        "rounds_completed": len(rows),
        "clients": len(clients),
        "client_windows": {c.name: c.num_examples for c in clients},
        "parameters": counts,
        "backbone_pretrained": model.backbone_pretrained,
    }
    if rows:
        last = rows[-1]
        summary["final"] = {k: last[k] for k in last if k.split("_", 1)[0] in ("val", "test")}
        if any("val_macro_f1" in r for r in rows):
            best = max(rows, key=lambda r: r.get("val_macro_f1", -1.0))
            scores = {k: best[k] for k in best if k.split("_", 1)[0] in ("val", "test")}
            summary["best_round"] = {"round": best["round"], **scores}
        per_client = [r["bytes_per_client"] for r in rows]
        summary["communication"] = {
            "bytes_total": int(sum(r["bytes_total"] for r in rows)),
            "bytes_per_client_per_round": float(np.mean(per_client)),
            "trainable_tensor_bytes": trainable_bytes,
            "full_model_bytes": full_bytes,
            # full-model FedAvg of the same model: every parameter down and up, once per client and round
            "ratio_vs_full_model_fedavg": float(np.mean(per_client)) / (2 * full_bytes),
        }
        summary["round_seconds_mean"] = float(np.mean([r["round_seconds"] for r in rows]))
    summary["wall_seconds"] = round(wall_s, 2)
    summary["server_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if model.backbone_pretrained is False:
        summary["warning"] = "UNTRAINED test backbone: these figures say nothing about pretrained models"
    if cfg.data.dataset == "synthetic":
        summary["data_note"] = "SYNTHETIC data: not a real-data result"
    return summary


def plot_rounds(rows: list[dict], out_dir: Path, title: str = "") -> list[Path]:
    """``rounds.png`` (metrics vs round) and ``bytes_vs_metric.png`` (macro-F1 vs cumulative bytes)."""
    rounds = [r["round"] for r in rows]
    splits = [s for s in ("val", "test") if f"{s}_macro_f1" in rows[0]]
    fig, (ax_score, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for i, split in enumerate(splits):
        f1 = [r[f"{split}_macro_f1"] for r in rows]
        ax_score.plot(rounds, f1, marker="o", color=f"C{i}", label=f"{split} macro-F1")
        ax_score.plot(rounds, [r[f"{split}_accuracy"] for r in rows], ls="--", color=f"C{i}", label=f"{split} accuracy")
        ax_loss.plot(rounds, [r[f"{split}_loss"] for r in rows], marker="o", color=f"C{i}", label=split)
    ax_score.set(xlabel="round", ylabel="score", ylim=(0, 1.02), title="global model, held-out subjects")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title="loss")
    for ax in (ax_score, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    paths = [out_dir / "rounds.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    cumulative = np.cumsum([r["bytes_total"] for r in rows]) / 1e6
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, split in enumerate(splits):
        f1 = [r[f"{split}_macro_f1"] for r in rows]
        ax.plot(cumulative, f1, marker="o", color=f"C{i}", label=f"{split} macro-F1")
    ax.set(xlabel="cumulative bytes sent + received (MB)", ylabel="macro-F1", ylim=(0, 1.02),
           title=title or "cost vs score")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "bytes_vs_metric.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
