"""Recipe candidates over several seeds, decided on validation: is a change a win or seed noise?

On HAPT the test macro-F1 of one model moves by about one point from seed to seed (all of it
SITTING <-> STANDING), more than most recipe changes, so one seed cannot choose a default. Each
candidate runs `fedhar train` once per seed (fresh processes, ``--parallel`` at a time, the CPU
threads split between them); a candidate is adopted only if its *validation* macro-F1 (subjects 25 26)
beats the base's on the same seeds by more than twice the standard error of the paired
differences (verdict ``better``) -- the test subjects are reported, never used to choose.

    python simulations/seed_study.py --out runs/seed-study --candidates base augment --seeds 0 1 2 3

``--folds K`` is the tie-breaker when two validation subjects cannot tell candidates apart: each
seed runs K times, fold k validating on every K-th training subject (sorted) and training on the
rest, and scoring on the configured validation subjects in place of the test subjects -- so the
test subjects are never touched. Pairs are then (seed, fold) and the verdict is on the held-out
training subjects of each fold:

    python simulations/seed_study.py --out runs/subject-cv --candidates base cues --seeds 0 --folds 3

``--no-run`` tabulates what is there without training. Finished runs
(``<out>/<candidate>-s<seed>/metrics.json``) are reused, so an interrupted study resumes; a run
finished with other settings stops the study. The tables hold the candidates asked for and the
base, whose finished runs are always read. Writes seed_study_runs.csv (one row per run), seed_study.csv/.json/.md (mean and sd per
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

from bench_common import finished_run_dir, plt, save_plot
from run_inputs import check_reusable, provenance

from fedhar.config import load_config
from fedhar.data.recording import natural_key
from fedhar.results.run import write_json_atomic

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
    "lr3e-4": ["train.lr=0.0003"],
    "lr2e-3": ["train.lr=0.002"],
    "dense": ["data.train_overlap=0.75"],
    "mixup": ["train.augment.mixup_alpha=0.2"],
}
FOCUS = ("SITTING", "STANDING")  # the confused pair on a waist phone


def run_name(candidate: str, seed: int, fold: int | None) -> str:
    return f"{candidate}-s{seed}" + ("" if fold is None else f"-f{fold}")


def fold_splits(train: list, val: list, folds: int) -> list[dict[str, list]]:
    """K subject folds over the training subjects; the validation subjects take the test role."""
    if not 2 <= folds <= len(train):
        raise SystemExit(f"--folds must be between 2 and the {len(train)} training subjects, got {folds}")
    if not val:
        raise SystemExit("--folds needs validation subjects in the config (data.split.val) to score each fold")
    ordered = sorted((str(x) for x in train), key=natural_key)
    parts = [ordered[k::folds] for k in range(folds)]
    return [{"train": [x for x in ordered if x not in part], "val": part, "test": [str(x) for x in val]}
            for part in parts]  # fmt: skip


def _finished(out: Path, candidate: str, seed: int, fold: int | None = None) -> Path | None:
    """The run's metrics.json; after a failed try `fedhar train` wrote the retry to ``<name>-2`` etc."""
    run_dir = finished_run_dir(out, run_name(candidate, seed, fold))
    return None if run_dir is None else run_dir / "metrics.json"


def _settings(args: argparse.Namespace, candidate: str, seed: int, fold: int | None) -> list[str]:
    """The overrides that make one run of the study what it is: seed, the study's overrides (they set the base,
    e.g. ``train.augment.mixup_alpha=0`` for the earlier default), then the candidate's change to it, fold."""
    split = [] if fold is None else [f"data.split.{role}=[{', '.join(subjects)}]"
                                     for role, subjects in args.fold_splits[fold].items()]  # fmt: skip
    return [f"seed={seed}", *args.overrides, *CANDIDATES[candidate], *split]


def _command(args: argparse.Namespace, candidate: str, seed: int, fold: int | None, threads: int) -> list[str]:
    return [sys.executable, "-m", "fedhar.cli.main", "train", "--config", args.config, "--quiet",
            f"name={run_name(candidate, seed, fold)}", f"output_dir={args.out}", f"train.num_threads={threads}",
            *_settings(args, candidate, seed, fold)]  # fmt: skip


def _reused(args: argparse.Namespace, job: tuple[str, int, int | None]) -> Path | None:
    """A finished run of ``job`` to reuse, checked to have the settings this study asks for now."""
    found = _finished(args.out, *job)
    if found is not None:
        check_reusable(found.parent, args.config, _settings(args, *job))
    return found


def _jobs(args: argparse.Namespace, candidates: list[str] | None = None) -> list[tuple[str, int, int | None]]:
    folds = range(len(args.fold_splits)) if args.fold_splits else [None]
    return [(c, s, f) for s in args.seeds for f in folds for c in candidates or args.candidates]  # pairs finish together


def run_all(args: argparse.Namespace) -> None:
    """Start the missing runs, ``--parallel`` at a time; a failed run stops the study with its log's path."""
    todo = [job for job in _jobs(args) if _reused(args, job) is None]
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    running: list[tuple[subprocess.Popen, Path, float]] = []
    print(f"{len(todo)} runs to do, {args.parallel} at a time with {threads} threads each", flush=True)
    while todo or running:
        while todo and len(running) < args.parallel:
            candidate, seed, fold = todo.pop(0)
            log = args.out / f"{run_name(candidate, seed, fold)}.log"
            cmd = _command(args, candidate, seed, fold, threads)
            print(f"start {log.stem}: {' '.join(cmd[2:])}", flush=True)
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


def run_row(out: Path, candidate: str, seed: int, fold: int | None = None) -> dict:
    m = json.loads(_finished(out, candidate, seed, fold).read_text())
    per_class = m["test"]["per_class_f1"]
    return {
        "candidate": candidate,
        "seed": seed,
        "fold": fold,
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
            "runs": len(mine),  # (seed, fold) pairs under --folds
            "val_mean": round(statistics.mean(val), 4),
            "val_sd": round(statistics.stdev(val), 4) if len(val) > 1 else None,
            "test_mean": round(statistics.mean(test), 4),
            "test_sd": round(statistics.stdev(test), 4) if len(test) > 1 else None,
            "test_min": min(test),
            **_paired_with_base(rows, c),
        })  # fmt: skip
    return out


def _paired_with_base(rows: list[dict], candidate: str) -> dict:
    """Mean difference to the base on the (seed, fold)s both ran: seed effects are large, so compare like with like."""
    base = {_unit(r): r for r in rows if r["candidate"] == "base"}
    mine = {_unit(r): r for r in rows if r["candidate"] == candidate}
    common = sorted(set(base) & set(mine), key=lambda u: (u[0], -1 if u[1] is None else u[1]))
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
    paired = " ".join(str(seed) if fold is None else f"{seed}/f{fold}" for seed, fold in common)
    return {"paired_seeds": paired, "val_vs_base": round(statistics.mean(val), 4),
            "val_vs_base_se": None if se is None else round(se, 4), "verdict": verdict,
            "test_vs_base": round(statistics.mean(test), 4)}  # fmt: skip


def _unit(row: dict) -> tuple[int, int | None]:
    return row["seed"], row.get("fold")


def write_outputs(out: Path, rows: list[dict], summary: list[dict], roles: tuple[str, str], record: dict) -> None:
    with (out / "seed_study_runs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    with (out / "seed_study.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(summary)
    write_json_atomic(out / "seed_study.json", {"summary": summary, "runs": rows, **record, **provenance()})
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
    ax.set(xlabel=f"best validation macro-F1 ({roles[0]})", ylabel=f"test macro-F1 ({roles[1]})",
           title="one point per run")  # fmt: skip
    save_plot(fig, ax, out / "seed_study.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/seed-study"))
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--candidates", nargs="+", default=["base"], choices=sorted(CANDIDATES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--folds", type=int, default=0,
                   help="cross-validate over the training subjects in this many folds (0: the config's split)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (the CPU threads are split)")
    p.add_argument("--no-run", action="store_true", help="only tabulate the runs already finished")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run, applied before each candidate's")
    args = p.parse_args()
    if args.parallel < 1:
        p.error("--parallel must be >= 1")
    split = load_config(args.config, args.overrides).data.split
    args.fold_splits = fold_splits(split.train or [], split.val or [], args.folds) if args.folds else []
    roles = ("each fold's held-out training subjects", "configured validation subjects") if args.folds else (
        "validation subjects", "test subjects")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_run:
        run_all(args)
    tabulated = list(dict.fromkeys(["base", *args.candidates]))  # every candidate is judged against the base
    rows = [run_row(args.out, *job) for job in _jobs(args, tabulated) if _reused(args, job)]
    if not rows:
        raise SystemExit(f"no finished runs of {args.candidates} under {args.out}")
    summary = summarize(rows, [c for c in tabulated if any(r["candidate"] == c for r in rows)])
    write_outputs(args.out, rows, summary, roles, {"config": args.config, "overrides": args.overrides,
                                                   "seeds": args.seeds, "folds": args.folds})  # fmt: skip
    for s in summary:
        if s["verdict"] is not None:
            print(f"{s['candidate']} vs base on {roles[0]}, runs {s['paired_seeds']}: {s['val_vs_base']:+.4f} "
                  f"(se {s['val_vs_base_se']}) -> {s['verdict']}; on {roles[1]} {s['test_vs_base']:+.4f} "
                  "(reported, not used to choose)")


if __name__ == "__main__":
    main()
