"""Is a difference real or seed noise? The seed study (recipe candidates over seeds and subject folds, decided
on validation) and seed ensembles of every size; studies of ``simulations/models.py`` (``seeds``, ``ensemble``).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from fedhar.benchmarks.claims import MODELS
from fedhar.benchmarks.recipe import parse
from fedhar.benchmarks.results import plt, save_plot, write_csv, write_json, write_markdown, write_results
from fedhar.benchmarks.runner import FEDHAR, add_run_arguments, check_reusable, check_runs, finished_run_dir, run_config
from fedhar.config import load_config
from fedhar.metrics import classification_metrics
from fedhar.data.recording import natural_key

# ---- the seed study --------------------------------------------------------------------------------------

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
    # the recipe axes of the claims' small-data question (#21): rate, steps, blocks kept, tokens, LoRA, frontend,
    # and two references run through the same folds -- the from-scratch Transformer and the random backbone
    "lr3e-3": ["train.lr=0.003"],
    "no-mixup": ["train.augment.mixup_alpha=0"],
    "epochs30": ["train.epochs=30", "train.patience=10"],
    "batch16": ["train.batch_size=16"],
    "blocks2": ["model.num_layers=2"],
    "blocks8": ["model.num_layers=8"],
    "tokens8": ["model.tokens=8"],
    "tokens32": ["model.tokens=32"],
    "lora-r2": ["model.lora.r=2", "model.lora.alpha=4"],
    "lora-r32": ["model.lora.r=32", "model.lora.alpha=64"],
    "lora-all-linear": ["model.lora.targets=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"],
    "frozen-backbone": ["model.finetune=frozen"],
    "frontend-wide": ["model.conv_channels=128"],
    "transformer": MODELS["transformer"],  # the claims benchmark's baseline, the same settings
    "transformer-lr3e-3": [*MODELS["transformer"], "train.lr=0.003"],
    "random-backbone": ["model.pretrained=false"],
    "random-backbone-lr3e-3": ["model.pretrained=false", "train.lr=0.003"],
}
FOCUS = ("SITTING", "STANDING")  # the confused pair on a waist phone


def run_name(candidate: str, seed: int, fold: int | None) -> str:
    return f"{candidate}-s{seed}" + ("" if fold is None else f"-f{fold}")


#: --fold-stopping: which subjects pick each fold's epoch (early stopping) and which score it
FOLD_STOPPING = {
    # the configured validation subjects stop every fold, the held-out training subjects are scored (test role):
    # no subject both picks the epoch and judges it
    "validation": ("each fold's held-out training subjects", "configured validation subjects (they stop the runs)"),
    # the earlier design: the held-out subjects both stop and score (optimistic for runs that peak early)
    "held-out": ("each fold's held-out training subjects (they also stop the runs)", "configured validation subjects"),
}


def fold_splits(train: list, val: list, folds: int, stopping: str = "validation") -> list[dict[str, list]]:
    """K subject folds over the training subjects, the held-out part of each scored, never the test subjects.

    ``stopping="validation"``: the configured validation subjects are each fold's validation role (they stop it)
    and the held-out training subjects its test role; ``"held-out"``: the held-out subjects validate (stop and
    score) and the validation subjects take the test role."""
    if stopping not in FOLD_STOPPING:
        raise SystemExit(f"--fold-stopping must be one of {list(FOLD_STOPPING)}, got `{stopping}`")
    if not 2 <= folds <= len(train):
        raise SystemExit(f"--folds must be between 2 and the {len(train)} training subjects, got {folds}")
    if not val:
        raise SystemExit("--folds needs validation subjects in the config (data.split.val) to score each fold")
    ordered = sorted((str(x) for x in train), key=natural_key)
    parts = [ordered[k::folds] for k in range(folds)]
    val = [str(x) for x in val]
    return [{"train": [x for x in ordered if x not in part], "val": val if stopping == "validation" else part,
             "test": part if stopping == "validation" else val} for part in parts]  # fmt: skip


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
    return [*FEDHAR, "train", "--config", args.config, "--quiet",
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


def run_row(out: Path, candidate: str, seed: int, fold: int | None = None, swapped: bool = False) -> dict:
    """One run's scores: ``best_val_macro_f1`` is the score that chooses, ``test_macro_f1`` the one reported;
    ``swapped`` (folds stopped on the validation subjects): the run's test role chooses, its validation reports."""
    m = json.loads(_finished(out, candidate, seed, fold).read_text())
    choose, report = m["best_val_macro_f1"], m["test"]["macro_f1"]
    reported = (m.get("val") or {}) if swapped else m["test"]  # the reported set's accuracy and per-class F1
    if swapped:
        choose, report = report, choose
    per_class = reported.get("per_class_f1", {})
    return {
        "candidate": candidate,
        "seed": seed,
        "fold": fold,
        "best_val_macro_f1": round(choose, 4),
        "best_epoch": m["best_epoch"],
        "test_macro_f1": round(report, 4),
        "test_accuracy": None if reported.get("accuracy") is None else round(reported["accuracy"], 4),
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
    write_csv(out / "seed_study_runs.csv", rows)
    write_csv(out / "seed_study.csv", summary)
    write_json(out / "seed_study.json", {"summary": summary, "runs": rows, **record})
    lines = write_markdown(out / "seed_study.md", summary, list(summary[0]))
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summary:
        mine = [r for r in rows if r["candidate"] == s["candidate"]]
        ax.scatter([r["best_val_macro_f1"] for r in mine], [r["test_macro_f1"] for r in mine], label=s["candidate"])
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set(xlabel=f"macro-F1 that chooses ({roles[0]})", ylabel=f"macro-F1 reported ({roles[1]})",
           title="one point per run")  # fmt: skip
    save_plot(fig, ax, out / "seed_study.png")


def seed_study(argv: list[str] | None = None) -> None:
    """Recipe candidates over several seeds, decided on validation: is a change a win or seed noise?

    On HAPT the test macro-F1 of one model moves by about one point from seed to seed (all of it
    SITTING <-> STANDING), more than most recipe changes, so one seed cannot choose a default. Each
    candidate runs `fedhar train` once per seed (fresh processes, ``--parallel`` at a time, the CPU
    threads split between them); a candidate is adopted only if its *validation* macro-F1 (subjects 25 26)
    beats the base's on the same seeds by more than twice the standard error of the paired
    differences (verdict ``better``) -- the test subjects are reported, never used to choose.

        python simulations/models.py seeds --out runs/seed-study --candidates base augment --seeds 0 1 2 3

    ``--folds K`` is the tie-breaker when two validation subjects cannot tell candidates apart: each
    seed runs K times, fold k holding out every K-th training subject (sorted) and training on the
    rest; the test subjects are never touched. Pairs are then (seed, fold) and the verdict is on the
    held-out training subjects of each fold. ``--fold-stopping validation`` (the default): the
    configured validation subjects stop each run (early stopping, the epoch kept) and the held-out
    subjects only score it; ``held-out`` (the earlier design): the held-out subjects both stop and
    score, the validation subjects are reported -- optimistic for runs whose score spikes early, since
    the subjects that pick the epoch also judge it:

        python simulations/models.py seeds --out runs/subject-cv --candidates base cues --seeds 0 --folds 3

    ``--no-run`` tabulates what is there without training. Finished runs
    (``<out>/<candidate>-s<seed>/metrics.json``) are reused, so an interrupted study resumes; a run
    finished with other settings stops the study. The tables hold the candidates asked for and the
    base, whose finished runs are always read. Writes seed_study_runs.csv (one row per run), seed_study.csv/.json/.md (mean and sd per
    candidate) and seed_study.png.
    """
    p = argparse.ArgumentParser(prog="models.py seeds", description=inspect.cleandoc(seed_study.__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/seed-study"))
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--candidates", nargs="+", default=["base"], choices=sorted(CANDIDATES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--folds", type=int, default=0,
                   help="cross-validate over the training subjects in this many folds (0: the config's split)")
    p.add_argument("--fold-stopping", choices=list(FOLD_STOPPING), default="validation",
                   help="under --folds, which subjects stop each run: the configured validation subjects (the held-out "
                        "training subjects are then only scored) or the held-out ones (they stop and score)")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time (the CPU threads are split)")
    p.add_argument("--no-run", action="store_true", help="only tabulate the runs already finished")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run, applied before each candidate's")
    args = parse(p, argv, "models", "seeds")
    if args.parallel < 1:
        p.error("--parallel must be >= 1")
    split = load_config(args.config, args.overrides).data.split
    args.fold_splits = (fold_splits(split.train or [], split.val or [], args.folds, args.fold_stopping)
                        if args.folds else [])  # fmt: skip
    roles = FOLD_STOPPING[args.fold_stopping] if args.folds else ("validation subjects", "test subjects")
    swapped = bool(args.folds) and args.fold_stopping == "validation"
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_run:
        run_all(args)
    tabulated = list(dict.fromkeys(["base", *args.candidates]))  # every candidate is judged against the base
    rows = [run_row(args.out, *job, swapped=swapped) for job in _jobs(args, tabulated) if _reused(args, job)]
    if not rows:
        raise SystemExit(f"no finished runs of {args.candidates} under {args.out}")
    summary = summarize(rows, [c for c in tabulated if any(r["candidate"] == c for r in rows)])
    write_outputs(args.out, rows, summary, roles, {"config": args.config, "overrides": args.overrides,
                                                   "seeds": args.seeds, "folds": args.folds,
                                                   "fold_stopping": args.fold_stopping if args.folds else None,
                                                   "chosen_on": roles[0], "reported_on": roles[1]})  # fmt: skip
    for s in summary:
        if s["verdict"] is not None:
            print(f"{s['candidate']} vs base on {roles[0]}, runs {s['paired_seeds']}: {s['val_vs_base']:+.4f} "
                  f"(se {s['val_vs_base_se']}) -> {s['verdict']}; on {roles[1]} {s['test_vs_base']:+.4f} "
                  "(reported, not used to choose)")

# ---- seed ensembles of every size ------------------------------------------------------------------


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
        cmd = [*FEDHAR, "evaluate", *(str(r / "checkpoint") for r in members),
               "--data", data, "--subjects", *subjects]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        timings.append({"checkpoints": len(members), "wall_s": round(time.perf_counter() - t0, 1),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)})  # fmt: skip
        print(f"  fedhar evaluate with {len(members)} checkpoint(s): {timings[-1]}", flush=True)
    return timings


def ensemble(argv: list[str] | None = None) -> None:
    """Seed ensembles of every size: how many members it takes to average out seed variance, and what it costs.

    `fedhar evaluate` scores several checkpoints as one ensemble (mean class probabilities,
    fedhar/model/ensemble.py). This recipe scores every subset of the given runs of each size on
    their validation and test subjects, from one forward pass per member (the ensemble's own rule:
    the mean of the members' softmax probabilities, argmax), and times `fedhar evaluate` on the test
    subjects with one checkpoint and with all of them (fresh processes: wall time and peak RSS,
    loading included).

        python simulations/models.py ensemble --out runs/ensemble runs/seed-study/base-s{0,1,2,3,4}

    Writes ensemble_subsets.csv (one row per subset), .json (means per size, the timings, versions,
    git revision) and .png.
    """
    p = argparse.ArgumentParser(prog="models.py ensemble", description=inspect.cleandoc(ensemble.__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "run folders of `fedhar train` on one split (e.g. seeds)")
    p.add_argument("--out", type=Path, default=Path("runs/ensemble"))
    p.add_argument("--sizes", nargs="+", type=int, help="subset sizes (default: 1 to the number of runs)")
    p.add_argument("--no-timing", action="store_true", help="skip timing `fedhar evaluate`")
    args = parse(p, argv, "models", "ensemble")
    if not args.runs:
        p.error("name the run folders to ensemble (or --quick, after `models.py seeds --quick`)")
    args.runs = [Path(r) for r in args.runs]
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


