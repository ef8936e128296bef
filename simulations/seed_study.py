"""Recipe candidates over several seeds, decided on validation: is a change a win or seed noise?

On HAPT the test macro-F1 of one model moves by about one point from seed to seed (all of it
SITTING <-> STANDING), more than most recipe changes, so one seed cannot choose a default. Each
candidate runs `fedhar train` once per seed (fresh processes, ``--parallel`` at a time, the CPU
threads split between them); a candidate is adopted only if its *validation* macro-F1 (subjects 25 26)
beats the base's on the same seeds by more than twice the standard error of the paired
differences (verdict ``better``) -- the test subjects are reported, never used to choose.

    python simulations/seed_study.py --out runs/seed-study --candidates base augment --seeds 0 1 2 3

``--no-run`` tabulates what is there without training. Finished runs (``<out>/<candidate>-s<seed>/metrics.json``) are reused, so an interrupted study
resumes. Writes seed_study_runs.csv (one row per run), seed_study.csv/.json/.md (mean and sd per
candidate) and seed_study.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import plt, save_plot

CANDIDATES = {
    "base": [],
    "label-smoothing": ["train.label_smoothing=0.1"],
    "meanpool": ["model.pooling=mean"],
    "meanpool-stats": ["model.pooling=mean", "model.stats_token=true"],
    "augment": ["train.augment.rotation_degrees=10", "train.augment.scale_std=0.1"],
    "augment-meanpool": ["train.augment.rotation_degrees=10", "train.augment.scale_std=0.1", "model.pooling=mean"],
    "ema": ["train.ema_decay=0.995"],
    "ema-meanpool": ["train.ema_decay=0.995", "model.pooling=mean"],
    "regularized": ["model.dropout=0.3", "train.weight_decay=0.1"],
    "cues": ["model.head_cues=true"],
    "cues-augment": ["model.head_cues=true", "train.augment.rotation_degrees=10", "train.augment.scale_std=0.1"],
}
FOCUS = ("SITTING", "STANDING")  # the confused pair on a waist phone


def _finished(out: Path, candidate: str, seed: int) -> Path | None:
    """The run's metrics.json; after a failed try `fedhar train` wrote the retry to ``<name>-2`` etc."""
    name = f"{candidate}-s{seed}"
    found = [p for p in [out / name / "metrics.json", *out.glob(f"{name}-[0-9]*/metrics.json")] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _command(args: argparse.Namespace, candidate: str, seed: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "fedhar.cli.main", "train", "--config", args.config, "--quiet",
            f"name={candidate}-s{seed}", f"output_dir={args.out}", f"seed={seed}", f"train.num_threads={threads}",
            *CANDIDATES[candidate], *args.overrides]  # fmt: skip


def run_all(args: argparse.Namespace) -> None:
    """Start the missing runs, ``--parallel`` at a time; a failed run stops the study with its log's path."""
    todo = [(c, s) for c in args.candidates for s in args.seeds if _finished(args.out, c, s) is None]
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    running: list[tuple[subprocess.Popen, Path, float]] = []
    print(f"{len(todo)} runs to do, {args.parallel} at a time with {threads} threads each", flush=True)
    while todo or running:
        while todo and len(running) < args.parallel:
            candidate, seed = todo.pop(0)
            log = args.out / f"{candidate}-s{seed}.log"
            cmd = _command(args, candidate, seed, threads)
            print(f"start {candidate} seed {seed}: {' '.join(cmd[2:])}", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), log, time.time()))
        time.sleep(5)
        for item in list(running):
            proc, log, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                for p, _, _ in running:
                    p.terminate()
                raise SystemExit(f"{log.stem} failed (exit {proc.returncode}); see {log}")
            print(f"done {log.stem} in {time.time() - t0:.0f} s", flush=True)


def run_row(out: Path, candidate: str, seed: int) -> dict:
    m = json.loads(_finished(out, candidate, seed).read_text())
    per_class = m["test"]["per_class_f1"]
    return {
        "candidate": candidate,
        "seed": seed,
        "best_val_macro_f1": round(m["best_val_macro_f1"], 4),
        "best_epoch": m["best_epoch"],
        "test_macro_f1": round(m["test"]["macro_f1"], 4),
        "test_accuracy": round(m["test"]["accuracy"], 4),
        **{f"test_f1_{c}": round(per_class[c], 4) for c in FOCUS if c in per_class},
        "train_seconds": m["train_seconds"],
        "device": m.get("device", "not recorded"),
    }


def summarize(rows: list[dict], candidates: list[str]) -> list[dict]:
    out = []
    for c in candidates:
        mine = [r for r in rows if r["candidate"] == c]
        val = [r["best_val_macro_f1"] for r in mine]
        test = [r["test_macro_f1"] for r in mine]
        out.append({
            "candidate": c,
            "overrides": " ".join(CANDIDATES[c]),
            "seeds": len(mine),
            "val_mean": round(statistics.mean(val), 4),
            "val_sd": round(statistics.stdev(val), 4) if len(val) > 1 else None,
            "test_mean": round(statistics.mean(test), 4),
            "test_sd": round(statistics.stdev(test), 4) if len(test) > 1 else None,
            "test_min": min(test),
            **_paired_with_base(rows, c),
        })  # fmt: skip
    return out


def _paired_with_base(rows: list[dict], candidate: str) -> dict:
    """Mean difference to the base on the seeds both ran: seed effects are large, so compare like with like."""
    base = {r["seed"]: r for r in rows if r["candidate"] == "base"}
    mine = {r["seed"]: r for r in rows if r["candidate"] == candidate}
    common = sorted(set(base) & set(mine))
    if candidate == "base" or not common:
        return {"paired_seeds": None, "val_vs_base": None, "val_vs_base_se": None, "verdict": None, "test_vs_base": None}
    val = [mine[s]["best_val_macro_f1"] - base[s]["best_val_macro_f1"] for s in common]
    test = [mine[s]["test_macro_f1"] - base[s]["test_macro_f1"] for s in common]
    se = statistics.stdev(val) / len(val) ** 0.5 if len(val) > 1 else None
    if se is None:
        verdict = "one seed: undecided"
    elif abs(statistics.mean(val)) <= 2 * se:
        verdict = "within seed noise"
    else:
        verdict = "better" if statistics.mean(val) > 0 else "worse"
    return {"paired_seeds": " ".join(map(str, common)), "val_vs_base": round(statistics.mean(val), 4),
            "val_vs_base_se": None if se is None else round(se, 4), "verdict": verdict,
            "test_vs_base": round(statistics.mean(test), 4)}  # fmt: skip


def write_outputs(out: Path, rows: list[dict], summary: list[dict]) -> None:
    with (out / "seed_study_runs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with (out / "seed_study.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    (out / "seed_study.json").write_text(json.dumps({"summary": summary, "runs": rows}, indent=2))
    cols = list(summary[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(s[c]) for c in cols) + " |" for s in summary]
    (out / "seed_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summary:
        mine = [r for r in rows if r["candidate"] == s["candidate"]]
        ax.scatter([r["best_val_macro_f1"] for r in mine], [r["test_macro_f1"] for r in mine], label=s["candidate"])
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="best validation macro-F1 (subjects 25 26)", ylabel="test macro-F1 (subjects 27-30)",
           title="one point per seed")  # fmt: skip
    save_plot(fig, ax, out / "seed_study.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/seed-study"))
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--candidates", nargs="+", default=["base"], choices=sorted(CANDIDATES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (the CPU threads are split)")
    p.add_argument("--no-run", action="store_true", help="only tabulate the runs already finished")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args()
    if args.parallel < 1:
        p.error("--parallel must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_run:
        run_all(args)
    rows = [run_row(args.out, c, s) for c in args.candidates for s in args.seeds if _finished(args.out, c, s)]
    if not rows:
        raise SystemExit(f"no finished runs of {args.candidates} under {args.out}")
    summary = summarize(rows, [c for c in args.candidates if any(r["candidate"] == c for r in rows)])
    write_outputs(args.out, rows, summary)
    for s in summary:
        if s["verdict"] is not None:
            print(f"{s['candidate']} vs base on validation, seeds {s['paired_seeds']}: {s['val_vs_base']:+.4f} "
                  f"(se {s['val_vs_base_se']}) -> {s['verdict']}; test {s['test_vs_base']:+.4f} (reported, not used to choose)")


if __name__ == "__main__":
    main()
