"""How every recipe writes its results: ``<stem>.json`` (rows with the provenance), ``<stem>.csv`` and
``<stem>.md`` (one row per variant) and a PNG, into the recipe's ``--out``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401  (the recipes plot through this module's pyplot)
import numpy as np  # noqa: E402

from fedhar.benchmarks.runner import provenance  # noqa: E402
from fedhar.results.run import write_json_atomic  # noqa: E402


def write_json(path: Path, record: dict) -> None:
    """``record`` with the provenance (command, versions, git revision), written atomically."""
    write_json_atomic(path, {**record, **provenance()})


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """One row per dict; ``columns`` (default: every key, in first-seen order) and nothing else."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def markdown(rows: list[dict], columns: list[str]) -> list[str]:
    """A Markdown table of ``rows`` (a missing cell is empty)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]


def write_markdown(path: Path, rows: list[dict], columns: list[str]) -> list[str]:
    lines = markdown(rows, columns)
    path.write_text("\n".join(lines) + "\n")
    return lines


def save_plot(fig, ax, path: Path) -> None:
    """The finish every recipe's line/scatter plot shares: grid, legend, tight layout, PNG."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_existing(out: Path, stem: str) -> list[dict]:
    """Earlier results of this recipe, so an interrupted benchmark resumes instead of redoing variants."""
    path = out / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else []


def save_index(results: dict, path: Path) -> None:
    """The recipe's index of finished variants, written atomically: it is how an interrupted run resumes."""
    write_json_atomic(path, list(results.values()))


# ---- `fedhar train` variants: one row each -----------------------------------------------------------------

TRAIN_COLUMNS = ["variant", "device", "model", "test_accuracy", "test_macro_f1", "best_val_macro_f1", "trainable",
                 "total", "trainable_percent", "epochs_run", "train_seconds", "train_windows_per_s", "wall_seconds",
                 "peak_rss_mb"]  # fmt: skip


def train_row(m: dict) -> dict:
    """The table row of one finished `fedhar train` run (its metrics.json plus the variant name)."""
    return {
        "variant": m["variant"],
        "device": m.get("device", "cpu"),
        "model": m["model"],
        "test_accuracy": round(m["test"]["accuracy"], 4),
        "test_macro_f1": round(m["test"]["macro_f1"], 4),
        "best_val_macro_f1": None if m["best_val_macro_f1"] is None else round(m["best_val_macro_f1"], 4),
        "trainable": m["parameters"]["trainable"],
        "total": m["parameters"]["total"],
        "trainable_percent": m["trainable_percent"],
        "epochs_run": m["epochs_run"],
        "train_seconds": m["train_seconds"],
        "train_windows_per_s": m["train_windows_per_s"],
        "wall_seconds": m["wall_seconds"],
        "peak_rss_mb": m["peak_rss_mb"],
    }


def write_train_table(rows: list[dict], out: Path, stem: str) -> None:
    """``<stem>.csv`` and ``<stem>.md`` of `fedhar train` variants (the index ``<stem>.json`` holds the runs)."""
    write_csv(out / f"{stem}.csv", rows, TRAIN_COLUMNS)
    print("\n" + "\n".join(write_markdown(out / f"{stem}.md", rows, TRAIN_COLUMNS)))
    write_json_atomic(out / f"{stem}.provenance.json", provenance())


def plot_f1_vs_params(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["trainable"], r["test_macro_f1"], s=60)
        ax.annotate(r["variant"], (r["trainable"], r["test_macro_f1"]), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)  # fmt: skip
    ax.set(xscale="log", xlabel="trainable parameters (log)", ylabel="test macro-F1", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- re-scored runs: one row per run, means per candidate -------------------------------------------------


def group_means(rows: list[dict]) -> dict[str, dict]:
    """Mean of every figure per candidate: runs named ``<candidate>-s<seed>[-f<fold>]`` (the seed study) group
    together."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(re.sub(r"-s\d+(-f\d+)?$", "", r["run"]), []).append(r)
    means = {}
    for g, rs in groups.items():
        keys = dict.fromkeys(k for r in rs for k, v in r.items() if isinstance(v, (int, float)))
        means[g] = {"runs": len(rs), **{k: round(float(np.mean([r[k] for r in rs if k in r])), 4) for k in keys}}
    return means


def write_results(out: Path, stem: str, rows: list[dict], fig, record: dict) -> None:
    """``<stem>.csv`` (one row per run), ``.json`` (record, rows, means per candidate, versions, git) and ``.png``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"{stem}.csv", rows)
    means = group_means(rows)
    write_json(out / f"{stem}.json", {**record, "per_run": rows, "mean_per_candidate": means})
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    plt.close(fig)
    for group, m in means.items():
        print(f"mean of {group}: " + "  ".join(f"{k} {v}" for k, v in m.items()))
    print(f"written to {out}/{stem}.csv, .json and .png")
