"""Federated vs centralized on HAPT, and the strategies (FedAvg, FFA-LoRA, exact LoRA, FedProx…); and the
partitions of the federations fedhar simulates (who holds which windows).

    python simulations/federated.py compare --out runs/fed-hapt                 # centralized + 4 strategies
    python simulations/federated.py partitions --out runs/partitions            # clients x classes tables
    python simulations/federated.py STUDY --quick                               # minutes

Settings: simulations/configs/federated.yaml.
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import numpy as np

from fedhar.benchmarks.recipe import dispatch, parse
from fedhar.benchmarks.results import load_existing, plt, save_index, save_plot, write_csv, write_json, write_markdown
from fedhar.benchmarks.runner import FEDHAR, REPO, check_reusable, measured_before, run_fresh, written_run_dir
from fedhar.config import DataConfig, SplitConfig, load_config
from fedhar.data.partition import client_names, partition, partition_summary
from fedhar.data.pipeline import load_windows
from fedhar.data.splits import split_by_subject
from fedhar.data.windows import WindowSet

# ---- compare: federated vs centralized, and the strategies -----------------------------------------------

STRATEGIES = ("fedavg", "ffa-lora", "lora-exact", "fedprox", "fedadam", "fedyogi")
DEFAULT_STRATEGIES = "fedavg,ffa-lora,lora-exact,fedprox"
#: federated settings that make the run comparable to the centralized recipe (cosine decay over training)
FEDERATED = ["federated.partition=subject", "federated.lr_schedule=cosine"]
COLUMNS = ["variant", "test_accuracy", "test_macro_f1", "best_round", "best_round_test_macro_f1",
           "gap_to_centralized", "bytes_per_client_per_round", "ratio_vs_full_model_fedavg", "bytes_total",
           "rounds", "wall_seconds"]  # fmt: skip


def run(cmd: list[str], name: str) -> float:
    print(f"\n=== {name}: {' '.join(cmd[3:])}", flush=True)
    return run_fresh(cmd, name)


def centralized(config: str, out: Path, overrides: list[str]) -> dict:
    cmd = [*FEDHAR, "train", "--config", config, "--quiet", "name=centralized",
           f"output_dir={out}", *overrides]  # fmt: skip
    wall = run(cmd, "centralized")
    run_dir = written_run_dir(out, "centralized")  # `centralized-2` when an earlier attempt holds the name
    return centralized_row(run_dir, overrides, wall)


def finished_centralized(run_dir: Path, config: str, overrides: list[str]) -> dict:
    """A finished `fedhar train` run with the same settings (the core benchmark's row (a)) as the centralized
    row, instead of training the same model a second time; one with other settings is refused."""
    if not (run_dir / "metrics.json").is_file():
        raise SystemExit(f"--centralized {run_dir}: no metrics.json there; "
                         "pass the folder of a finished `fedhar train` run")
    check_reusable(run_dir, config, overrides)
    print(f"centralized: the finished run {run_dir}")
    return centralized_row(run_dir, overrides)


def centralized_row(run_dir: Path, overrides: list[str], wall: float | None = None) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"variant": "centralized", "test_accuracy": round(m["test"]["accuracy"], 4),
            "test_macro_f1": round(m["test"]["macro_f1"], 4),
            "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"],
            "wall_seconds": round(m["wall_seconds"] if wall is None else wall, 1),
            "overrides": overrides, "run_dir": str(run_dir)}  # fmt: skip


def federated_overrides(strategy: str, overrides: list[str]) -> list[str]:
    return [f"federated.strategy={strategy}", *FEDERATED, *overrides]


def federated(config: str, strategy: str, out: Path, overrides: list[str]) -> dict:
    name = f"fed-{strategy}"
    cmd = [*FEDHAR, "simulate", "--config", config, "--quiet", f"name={name}",
           f"output_dir={out}", *federated_overrides(strategy, overrides)]  # fmt: skip
    if (out / name / "config.yaml").is_file() and not (out / name / "metrics.json").is_file():
        check_reusable(out / name, config, federated_overrides(strategy, overrides), kind="simulate")
        cmd = [*FEDHAR, "simulate", "--quiet", "--resume", str(out / name)]
    wall = run(cmd, name)
    run_dir = written_run_dir(out, name)
    m = json.loads((run_dir / "metrics.json").read_text())
    rows = json.loads((run_dir / "rounds.json").read_text())["rounds"]
    comm = m["communication"]
    return {
        "variant": name,
        "test_accuracy": round(m["final"]["test_accuracy"], 4),
        "test_macro_f1": round(m["final"]["test_macro_f1"], 4),
        "best_round": m["best_round"]["round"],
        "best_round_test_macro_f1": round(m["best_round"]["test_macro_f1"], 4),
        "bytes_per_client_per_round": round(comm["bytes_per_client_per_round"]),
        "ratio_vs_full_model_fedavg": round(comm["ratio_vs_full_model_fedavg"], 5),
        "bytes_total": comm["bytes_total"],
        "rounds": m["rounds_completed"],
        "wall_seconds": round(wall, 1),
        "per_round": [{k: r.get(k) for k in ("round", "val_macro_f1", "test_macro_f1", "test_accuracy", "bytes_total",
                                             "lora_product_gap", "lora_svd_residual")} for r in rows],  # fmt: skip
        "overrides": federated_overrides(strategy, overrides),
        "run_dir": str(run_dir),
    }


def write_outputs(results: dict[str, dict], out: Path, test_subjects: str) -> None:
    central = results.get("centralized")
    for r in results.values():
        if central and r["variant"] != "centralized":
            r["gap_to_centralized"] = round(r["test_macro_f1"] - central["test_macro_f1"], 4)
    save_index(results, out / "fed_hapt.json")
    rows = [{c: r.get(c, "") for c in COLUMNS} for r in results.values()]
    write_csv(out / "fed_hapt.csv", rows, COLUMNS)
    print("\n" + "\n".join(write_markdown(out / "fed_hapt.md", rows, COLUMNS)))
    write_json(out / "fed_hapt.provenance.json", {})

    feds = [r for r in results.values() if "per_round" in r]
    per_round = [{"variant": r["variant"], **{k: q[k] for k in ("round", "val_macro_f1", "test_macro_f1",
                                                                  "test_accuracy", "bytes_total")}}
                 for r in feds for q in r["per_round"]]  # fmt: skip
    write_csv(out / "fed_hapt_rounds.csv", per_round,
              ["variant", "round", "val_macro_f1", "test_macro_f1", "test_accuracy", "bytes_total"])
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in feds:
        ax.plot([p["round"] for p in r["per_round"]], [p["test_macro_f1"] for p in r["per_round"]], marker="o",
                ms=3, label=r["variant"])  # fmt: skip
    if central:
        ax.axhline(central["test_macro_f1"], color="k", ls="--", label=f"centralized ({central['test_macro_f1']:.3f})")
    ax.set(xlabel="round", ylabel=f"test macro-F1 (subjects {test_subjects})", ylim=(0, 1.02),
           title="HAPT: federated vs centralized")  # fmt: skip
    save_plot(fig, ax, out / "fed_hapt.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in feds:
        ax.scatter(r["bytes_total"] / 1e6, r["test_macro_f1"], s=50)
        ax.annotate(r["variant"], (r["bytes_total"] / 1e6, r["test_macro_f1"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)  # fmt: skip
    ax.set(xlabel="total bytes sent + received over the run (MB)", ylabel="final test macro-F1", title="cost vs score")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "fed_hapt_bytes.png", dpi=120)
    plt.close(fig)


def compare(argv: list[str] | None = None) -> None:
    """Federated vs centralized on HAPT, and the strategy comparison (FedAvg, FFA-LoRA, exact LoRA, FedProx).

    One client per training subject (the 15 of configs/hapt.yaml), validation subjects 25 26 and
    test subjects 27-30 scored centrally by the server every round. The centralized run trains the
    same model on the same subjects with ``fedhar train``. Every variant runs in a fresh process.

        python simulations/federated.py compare --out runs/fed-hapt                       # centralized + 4 strategies
        python simulations/federated.py compare --out runs/fed-hapt --strategies fedavg   # the headline comparison only
        python simulations/federated.py compare --out runs/fed-hapt federated.rounds=30   # overrides for every run
        python simulations/federated.py compare --out runs/fed-hapt --centralized runs/bench-core/smollm2-lora  # reuse row (a)

    Writes into --out: fed_hapt.json (everything), fed_hapt.csv / .md (one row per variant: final test
    accuracy and macro-F1, the best round and its test macro-F1, gap to centralized, bytes per client
    per round, ratio to full-model FedAvg, wall time), fed_hapt_rounds.csv (test and validation
    macro-F1 per round per strategy), fed_hapt.png (test macro-F1 vs round, centralized as a line) and
    fed_hapt_bytes.png (final test macro-F1 vs total bytes). Re-running skips variants already
    measured with the same settings, and stops on one measured with others.
    """
    p = argparse.ArgumentParser(prog="federated.py compare", description=inspect.cleandoc(compare.__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/fed-hapt"))
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES, help=f"comma-separated subset of {list(STRATEGIES)}")
    p.add_argument("--skip-centralized", action="store_true")
    p.add_argument("--centralized", type=Path, metavar="RUN_DIR",
                   help="a finished `fedhar train` run of the same settings to use as the centralized row, "
                        "e.g. runs/bench-core/smollm2-lora (checked), instead of training it again")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="overrides for every run (centralized and federated)")
    args = parse(p, argv, "federated", "compare")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {r["variant"]: r for r in load_existing(args.out, "fed_hapt")}
    test_subjects = " ".join(map(str, load_config(args.config, args.overrides).data.split.test or [])) or "held out"
    if args.centralized and args.skip_centralized:
        raise SystemExit("--centralized RUN_DIR and --skip-centralized contradict each other; pass one")
    if args.centralized:
        results["centralized"] = finished_centralized(args.centralized, args.config, args.overrides)
        write_outputs(results, args.out, test_subjects)
    elif not args.skip_centralized and not measured_before(results, "centralized", args.config, args.overrides):
        results["centralized"] = centralized(args.config, args.out, args.overrides)
        write_outputs(results, args.out, test_subjects)
    for strategy in args.strategies.split(","):
        if strategy not in STRATEGIES:
            raise SystemExit(f"unknown strategy `{strategy}`; choose from {list(STRATEGIES)}")
        if measured_before(results, f"fed-{strategy}", args.config, federated_overrides(strategy, args.overrides),
                           kind="simulate"):  # fmt: skip
            continue
        results[f"fed-{strategy}"] = federated(args.config, strategy, args.out, args.overrides)
        write_outputs(results, args.out, test_subjects)



# ---- partitions: who holds which windows -------------------------------------------------------------

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


def partitions(argv: list[str] | None = None) -> None:
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

        python simulations/federated.py partitions --out runs/partitions [--hapt ../shared/data/hapt-train]

    Without the HAPT copy, (a) and (b) are skipped with a message; (c) always runs.
    """
    parser = argparse.ArgumentParser(prog="federated.py partitions", description=inspect.cleandoc(partitions.__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "partitions")
    parser.add_argument("--hapt", type=Path, default=REPO.parent / "shared" / "data" / "hapt-train")
    parser.add_argument("--seed", type=int, default=0)
    args = parse(parser, argv, "federated", "partitions")
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
    write_json(args.out / "headlines.json", {**headlines, "seed": args.seed})
    print(f"wrote {args.out}")



def main(argv: list[str] | None = None) -> None:
    dispatch({"compare": compare, "partitions": partitions}, argv, __doc__)
