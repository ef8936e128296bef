"""Partition summaries of the federations fedhar simulates: who holds which windows.

Writes, into ``--out`` (e.g. runs/partitions/), a clients × classes table (CSV, JSON) and a
chart (PNG) for each of:

(a) one client per subject on the 15 HAPT training subjects 1 3 5 6 7 8 11 14 15 16 17 19 21
    22 23 (6 basic activities, 128-sample windows at 50 Hz, 50 % overlap);
(b) Dirichlet label skew, α = 0.3, over the same windows, 15 clients;
(c) a synthetic federation of 3 devices × 3 placements (its seeded training split), partitioned
    by device and by placement. Its labels are balanced by construction: the heterogeneity
    of those clients is in the signals (rates, axes, noise, posture), not in the label mix.

plus ``headlines.json`` with each table's headline numbers. Usage:

    python simulations/partition_summaries.py --out runs/partitions [--hapt ../shared/data/hapt-train]

Without the HAPT copy, (a) and (b) are skipped with a message; (c) always runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from run_inputs import provenance

from fedhar.config import DataConfig, SplitConfig
from fedhar.data.partition import client_names, partition, partition_summary
from fedhar.data.pipeline import load_windows
from fedhar.data.splits import split_by_subject
from fedhar.data.windows import WindowSet
from fedhar.results.run import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
BASIC6 = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
HAPT_TRAIN_SUBJECTS = ["1", "3", "5", "6", "7", "8", "11", "14", "15", "16", "17", "19", "21", "22", "23"]
SYNTHETIC_FEDERATION = {"subjects": 6, "devices": ["phone-a", "phone-b", "watch-c"],
                        "placements": ["waist", "pocket", "wrist"]}  # fmt: skip


def headline(table: dict) -> dict:
    """The numbers worth quoting from one summary table."""
    counts = np.array([c["counts"] for c in table["clients"]])
    return {
        "clients": table["num_clients"],
        "windows": table["total_windows"],
        "windows_per_client": table["windows_per_client"],
        "mean_label_entropy": table["mean_label_entropy"],
        "mean_classes_present": table["mean_classes_present"],
        "clients_missing_a_class": int((counts == 0).any(axis=1).sum()),
        "largest_class_share_median": round(float(np.median(counts.max(1) / np.maximum(counts.sum(1), 1))), 3),
        "png": table["files"]["png"],
    }


def summarise(ws: WindowSet, scheme: str, out: Path, title: str, seed: int, **options) -> dict:
    parts = partition(ws, scheme, seed=seed, **options)
    table = partition_summary(ws, parts, client_names(ws, scheme, parts), out, title)
    numbers = headline(table)
    print(f"{title}: {numbers['clients']} clients, {numbers['windows']} windows, per client "
          f"min/median/max {numbers['windows_per_client']['min']}/{numbers['windows_per_client']['median']:g}/"
          f"{numbers['windows_per_client']['max']}, mean label entropy {numbers['mean_label_entropy']:.3f}, "
          f"{numbers['clients_missing_a_class']} clients miss a class")  # fmt: skip
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "partitions")
    parser.add_argument("--hapt", type=Path, default=REPO.parent / "shared" / "data" / "hapt-train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    headlines: dict[str, dict] = {}

    if (args.hapt / "RawData" / "labels.txt").is_file():
        cfg = DataConfig(dataset="hapt", path=str(args.hapt), classes=BASIC6, window=128, overlap=0.5)
        hapt, _, _ = split_by_subject(load_windows(cfg, args.seed), SplitConfig(train=HAPT_TRAIN_SUBJECTS), args.seed)
        headlines["hapt_subject"] = summarise(
            hapt, "subject", args.out, "HAPT training subjects, one client per subject", args.seed
        )
        headlines["hapt_dirichlet"] = summarise(
            hapt, "dirichlet", args.out, "HAPT training subjects, Dirichlet alpha 0.3, 15 clients", args.seed,
            num_clients=15, alpha=0.3,
        )  # fmt: skip
    else:
        print(f"HAPT not found at {args.hapt}: skipping (a) and (b); pass --hapt to point at it")

    cfg = DataConfig(dataset="synthetic", synthetic=SYNTHETIC_FEDERATION, window=128, overlap=0.5)
    synthetic, _, _ = split_by_subject(load_windows(cfg, args.seed), cfg.split, args.seed)
    for scheme in ("device", "placement"):
        headlines[f"synthetic_{scheme}"] = summarise(
            synthetic, scheme, args.out, f"Synthetic 3 devices x 3 placements, one client per {scheme}", args.seed
        )
    headlines["synthetic_train_subjects"] = sorted(set(synthetic.subject.tolist()), key=int)
    write_json_atomic(args.out / "headlines.json", {**headlines, "seed": args.seed, **provenance()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
