"""Shared by the benchmark recipes: run `fedhar train` variants in fresh processes and tabulate them.

A fresh process per variant makes peak RSS and wall time per model honest (nothing cached in
memory from the previous variant).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from run_inputs import check_reusable, provenance  # noqa: E402

from fedhar.results.run import write_json_atomic  # noqa: E402

COLUMNS = ["variant", "device", "model", "test_accuracy", "test_macro_f1", "best_val_macro_f1", "trainable", "total",
           "trainable_percent", "epochs_run", "train_seconds", "train_windows_per_s", "wall_seconds", "peak_rss_mb"]  # fmt: skip


def run_fresh(cmd: list[str], name: str) -> float:
    """Run one variant's command in a fresh process; its wall seconds, or a stop naming the command."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    return time.perf_counter() - t0


def run_variant(config: str, name: str, out: Path, overrides: list[str]) -> dict:
    """One `fedhar train` run; returns its metrics.json plus the variant name."""
    cmd = [sys.executable, "-m", "fedhar.cli.main", "train", "--config", config, "--quiet",
           f"name={name}", f"output_dir={out}", *overrides]  # fmt: skip
    print(f"\n=== {name}: {' '.join(overrides) or '(config defaults)'}", flush=True)
    t0 = time.perf_counter()
    run_fresh(cmd, name)
    run_dir = written_run_dir(out, name)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["variant"] = name
    metrics["overrides"] = overrides
    metrics["run_dir"] = str(run_dir)
    print(f"    done in {time.perf_counter() - t0:.0f} s: test macro-F1 {metrics['test']['macro_f1']:.4f}", flush=True)
    return metrics


def finished_run_dir(out: Path, name: str) -> Path | None:
    """The folder a finished run called ``name`` wrote: ``name`` itself, or ``name-2``, ``name-3``… when the name
    was taken (never ``name-other``), the newest if several; None when none finished."""
    pattern = re.compile(rf"{re.escape(name)}(-\d+)?")
    found = [p for p in out.glob(f"{name}*/metrics.json") if pattern.fullmatch(p.parent.name)]
    return max(found, key=lambda p: p.stat().st_mtime).parent if found else None


def written_run_dir(out: Path, name: str) -> Path:
    """:func:`finished_run_dir` of a run that just ended successfully: it must be there."""
    run_dir = finished_run_dir(out, name)
    if run_dir is None:
        raise SystemExit(f"no finished run `{name}` under {out} (no metrics.json)")
    return run_dir


def measured_before(results: dict, name: str, config: str, overrides: list[str], kind: str = "train") -> bool:
    """Whether ``name`` is already measured in this recipe's results, with the settings asked for now; a run
    measured with other settings stops the recipe (run_inputs.check_reusable) instead of being reported."""
    if name not in results:
        return False
    run_dir = Path(results[name]["run_dir"])
    if (run_dir / "config.yaml").is_file():
        check_reusable(run_dir, config, overrides, kind)
        print(f"{name}: already measured in {run_dir}")
    else:
        print(f"{name}: already measured in {run_dir} (that folder is gone: its settings are not re-checked)")
    return True


def save_index(results: dict, path: Path) -> None:
    """The recipe's index of finished variants, written atomically: it is how an interrupted run resumes."""
    write_json_atomic(path, list(results.values()))


def row(m: dict) -> dict:
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


def write_table(rows: list[dict], out: Path, stem: str) -> None:
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


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


def group_means(rows: list[dict]) -> dict[str, dict]:
    """Mean of every figure per candidate: runs named ``<candidate>-s<seed>[-f<fold>]`` (seed_study.py) group together."""
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
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    means = group_means(rows)
    write_json_atomic(out / f"{stem}.json", {**record, "per_run": rows, "mean_per_candidate": means, **provenance()})
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    for group, m in means.items():
        print(f"mean of {group}: " + "  ".join(f"{k} {v}" for k, v in m.items()))
    print(f"written to {out}/{stem}.csv, .json and .png")
