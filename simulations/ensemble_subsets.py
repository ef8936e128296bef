"""Seed ensembles of every size: how many members it takes to average out seed variance, and what it costs.

`fedhar evaluate` scores several checkpoints as one ensemble (mean class probabilities,
fedhar/model/ensemble.py). This recipe scores every subset of the given runs of each size on
their validation and test subjects, from one forward pass per member (the ensemble's own rule:
the mean of the members' softmax probabilities, argmax), and times `fedhar evaluate` on the test
subjects with one checkpoint and with all of them (fresh processes: wall time and peak RSS,
loading included).

    python simulations/ensemble_subsets.py --out runs/ensemble runs/seed-study/base-s{0,1,2,3,4}

Writes ensemble_subsets.csv (one row per subset), .json (means per size, the timings, versions,
git revision) and .png.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import write_results  # noqa: E402
from run_inputs import add_run_arguments, check_runs, run_config  # noqa: E402

from fedhar.metrics import classification_metrics  # noqa: E402


def member_probabilities(runs: list[Path], overrides: list[str]) -> tuple[dict, dict]:
    """Each run's class probabilities on its config's validation and test subjects (which all runs must share)."""
    import torch

    from fedhar.inference import windows_for_model
    from fedhar.model.har_model import predict_logits
    from fedhar.model.state import load_checkpoint

    cfg = run_config(runs[0], overrides)
    roles = {"val": [str(s) for s in cfg.data.split.val], "test": [str(s) for s in cfg.data.split.test]}
    for run in runs[1:]:
        split = run_config(run, overrides).data.split
        if [str(s) for s in split.val] != roles["val"] or [str(s) for s in split.test] != roles["test"]:
            raise SystemExit(f"{run} holds out other subjects than {runs[0]}: ensemble runs of one split")
    probs: dict[str, dict[str, np.ndarray]] = {role: {} for role in roles}
    parts = {}
    for run in runs:
        model = load_checkpoint(run / "checkpoint")
        ws = windows_for_model(model.data, cfg.data.path, cfg.data.dataset, None)
        for role, subjects in roles.items():
            part = parts.setdefault(role, ws.where(subject=subjects))
            if not len(part):
                raise SystemExit(f"{run}: none of the {role} subjects {subjects} are in {cfg.data.path}")
            logits = torch.from_numpy(predict_logits(model, part.x))
            probs[role][run.name] = logits.float().softmax(dim=-1).numpy()
        print(f"  {run.name}: scored", flush=True)
    return probs, parts


def score_subsets(probs: dict, parts: dict, sizes: list[int]) -> list[dict]:
    names = list(probs["test"])
    rows = []
    for size in sizes:
        for members in itertools.combinations(names, size):
            row = {"run": f"{size} members", "members": " ".join(members), "size": size}  # "run": grouped by size
            for role, part in parts.items():
                pred = np.mean([probs[role][m] for m in members], axis=0).argmax(axis=1)
                row[f"{role}_macro_f1"] = round(classification_metrics(part.y, pred, part.label_names)["macro_f1"], 4)
            rows.append(row)
    return rows


def time_cli(runs: list[Path], subjects: list[str], data: str) -> list[dict]:
    """`fedhar evaluate` with the first checkpoint, then all: wall time and peak RSS of each fresh process.

    The children's peak RSS is a running maximum over finished children, so the smaller job goes first."""
    timings = []
    for members in (runs[:1], runs):
        cmd = [sys.executable, "-m", "fedhar.cli.main", "evaluate", *(str(r / "checkpoint") for r in members),
               "--data", data, "--subjects", *subjects]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        timings.append({"checkpoints": len(members), "wall_s": round(time.perf_counter() - t0, 1),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)})  # fmt: skip
        print(f"  fedhar evaluate with {len(members)} checkpoint(s): {timings[-1]}", flush=True)
    return timings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "run folders of `fedhar train` on one split (e.g. seeds)")
    p.add_argument("--out", type=Path, default=Path("runs/ensemble"))
    p.add_argument("--sizes", nargs="+", type=int, help="subset sizes (default: 1 to the number of runs)")
    p.add_argument("--no-timing", action="store_true", help="skip timing `fedhar evaluate`")
    args = p.parse_args()
    check_runs(args.runs)
    sizes = args.sizes or list(range(1, len(args.runs) + 1))
    if not all(1 <= s <= len(args.runs) for s in sizes):
        raise SystemExit(f"--sizes must lie in 1..{len(args.runs)} (the number of runs), got {sizes}")

    probs, parts = member_probabilities(args.runs, args.overrides)
    rows = score_subsets(probs, parts, sizes)
    timings = [] if args.no_timing else time_cli(
        args.runs, sorted(set(parts["test"].subject.tolist())), run_config(args.runs[0], args.overrides).data.path
    )  # fmt: skip

    fig, ax = plt.subplots(figsize=(6, 4))
    for role, marker in (("val", "o"), ("test", "s")):
        ax.scatter([r["size"] + (0.08 if role == "test" else -0.08) for r in rows], [r[f"{role}_macro_f1"] for r in rows],
                   marker=marker, alpha=0.6, label=role)  # fmt: skip
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="members (seeds) averaged", ylabel="macro-F1", xticks=sizes, title="seed ensembles of every size")
    ax.legend()
    ax.grid(alpha=0.3)
    write_results(args.out, "ensemble_subsets", rows, fig,
                  {"runs": [str(r) for r in args.runs], "sizes": sizes, "overrides": args.overrides,
                   "cli_timing": timings})  # fmt: skip


if __name__ == "__main__":
    main()
