"""Every continual method on the shipped continual scenarios, over seeds: final average macro-F1, forgetting,
BWT, FWT and bytes per client per round, mean ± sd.

Scenarios (``--scenarios``): ``synthetic`` (configs/continual.yaml), ``hapt`` (configs/continual-hapt.yaml, real
HAPT in ../shared/data/hapt-train) and ``spar`` (configs/continual-spar.yaml, ../shared/data/spar-watch). Every
variant is a ``fedhar simulate`` run in a fresh process; its scores come from the run's ``continual.json``.

Hyper-parameters are chosen on the **validation** subjects, never on the test subjects: for every method
with a setting (``replay``: ``continual.replay_size``; ``l2`` / ``ewc`` / ``ewc-product`` (ewc with
``continual.ewc_importance=product``) / ``olora``: ``continual.reg_strength``)
the grid (``--replay-sizes``, ``--reg-strengths``) runs at the first seed, the value with the best
*validation* final average macro-F1 is kept (ties: the first listed), and the other seeds run with it.
``--tune-on`` names the scenarios that run the grid; the others take the value chosen on the first of them
(a setting carried from one scenario's validation subjects to another scenario: still no test score
involved). The table reports the test subjects' scores of the chosen setting over all seeds; the grid's
rows are in continual_runs.csv.

    python simulations/continual.py --out runs/continual-bench                       # all of it
    python simulations/continual.py --out runs/continual-bench --tune-on synthetic   # as in docs/continual.md
    python simulations/continual.py --out runs/continual-bench --scenarios synthetic --seeds 0,1,2
    python simulations/continual.py --out runs/continual-quick --quick               # minutes, tiny
    python simulations/continual.py --out runs/continual-bench --table-only          # tabulate what ran

Settings (and what --quick changes): simulations/configs/continual.yaml. Writes into --out:
continual_runs.json / .csv (every run: scenario, method, setting, seed, validation and
test scores), continual_table.csv / .md (per scenario and method, chosen setting, mean ± sd over seeds),
continual_targets.md (the issue's targets, each with the measured value and whether it holds) and
continual_benchmark.png (final average macro-F1 against forgetting). Re-running reuses runs measured with
the same settings and stops on one measured with others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from fedhar.benchmarks.recipe import parse
from fedhar.benchmarks.results import plt, save_plot, write_csv, write_json
from fedhar.benchmarks.runner import simulate_variant
from fedhar.config import CONTINUAL_METHODS

SCENARIOS = {"synthetic": "configs/continual.yaml", "hapt": "configs/continual-hapt.yaml",
             "spar": "configs/continual-spar.yaml"}  # fmt: skip
#: benchmark rows that are a method plus an option: ewc with its importance on the LoRA product B·A
VARIANTS = {"ewc-product": ["continual.method=ewc", "continual.ewc_importance=product"]}
METHODS = (*(m for m in ("naive", "replay", "l2", "ewc", "olora", "joint") if m in CONTINUAL_METHODS), *VARIANTS)
#: the one setting of each method that is chosen on validation subjects
SETTING = {"replay": "continual.replay_size", "l2": "continual.reg_strength", "ewc": "continual.reg_strength",
           "ewc-product": "continual.reg_strength", "olora": "continual.reg_strength"}  # fmt: skip
#: replay's messages carry a larger window count and the like: a ratio this close to 1 is "no more bytes"
BYTES_SLACK = 1.01
RUN_COLUMNS = ["scenario", "method", "setting", "seed", "val_final_average", "test_final_average", "test_forgetting",
               "test_max_forgetting", "test_bwt", "test_fwt", "test_final_accuracy", "bytes_per_client_per_round",
               "wall_seconds", "run_dir"]  # fmt: skip


def quick_config(config: str, out: Path) -> str:
    """--quick: the scenario's config with one round per stage, written into ``out`` (the runs record it)."""
    data = yaml.safe_load(Path(config).read_text())
    for stage in data["continual"]["stages"]:
        stage["rounds"] = 1
    path = out / f"quick-{Path(config).name}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def simulate(config: str, name: str, out: Path, overrides: list[str]) -> tuple[dict, float | None, Path]:
    """One ``fedhar simulate`` run, or the one measured before with the same settings (wall time then None)."""
    return simulate_variant(config, name, out, overrides, result="continual.json")


def measured(out: Path, name: str) -> bool:
    return (out / name / "continual.json").is_file()


def run_row(scenario: str, method: str, setting: str, seed: int, c: dict, wall: float | None, run_dir: Path) -> dict:
    if not c.get("complete"):
        raise SystemExit(f"{run_dir}: the run did not finish every stage (continual.json is incomplete)")
    test, val = c["metrics"]["test"], c["metrics"]["val"]
    rounds = sum(b["rounds"] for b in c["bytes_per_stage"])
    per_round = sum(b["bytes_per_client_per_round"] * b["rounds"] for b in c["bytes_per_stage"]) / rounds
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"scenario": scenario, "method": method, "setting": setting, "seed": seed,
            "val_final_average": val["macro_f1"]["final_average"],
            "test_final_average": test["macro_f1"]["final_average"],
            "test_forgetting": test["macro_f1"]["forgetting"], "test_max_forgetting": test["macro_f1"]["max_forgetting"],
            "test_bwt": test["macro_f1"]["bwt"], "test_fwt": test["macro_f1"]["fwt"],
            "test_final_accuracy": test["accuracy"]["final_average"], "bytes_per_client_per_round": per_round,
            "bytes_per_stage": c["bytes_per_stage"],
            "wall_seconds": wall if wall is not None else metrics.get("wall_seconds"), "run_dir": str(run_dir)}  # fmt: skip


def variant(scenario: str, method: str, seed: int, value: str | None, base: list[str]) -> tuple[str, list[str], str]:
    """(run name, overrides, setting label) of one run."""
    overrides = [*base, f"seed={seed}", *VARIANTS.get(method, [f"continual.method={method}"])]
    label = ""
    if value is not None:
        overrides.append(f"{SETTING[method]}={value}")
        label = f"{SETTING[method].split('.')[-1]}={value}"
    tag = f"-{SETTING[method].split('.')[-1].replace('_', '')}{value}" if value is not None else ""
    return f"{scenario}-{method}{tag}-s{seed}", overrides, label


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="continual.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/continual-bench"))
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--replay-sizes", default="32,128,512", help="replay's grid (windows per client)")
    p.add_argument("--reg-strengths", default="0.1,1,10", help="l2 / ewc / olora grid (λ)")
    p.add_argument("--tune-on", default=None, help="scenarios that run the grid on their own validation subjects "
                   "(default: all); the others take the setting chosen on the first of these (it must run too)")
    p.add_argument("--table-only", action="store_true", help="train nothing: tabulate the runs measured so far")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parse(p, argv, "continual")
    scenarios, methods = args.scenarios.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    grids = {"continual.replay_size": args.replay_sizes.split(","),
             "continual.reg_strength": args.reg_strengths.split(",")}  # fmt: skip
    if args.quick:
        scenarios, seeds = ["synthetic"], seeds[:1]
        grids = {k: v[:2] for k, v in grids.items()}
    tune_on = scenarios if args.tune_on is None else args.tune_on.split(",")
    for s in [*scenarios, *tune_on]:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario `{s}`; choose from {list(SCENARIOS)}")
    if not [s for s in scenarios if s in tune_on]:
        raise SystemExit(f"--tune-on {','.join(tune_on)}: none of these runs (--scenarios {','.join(scenarios)}); "
                         "the settings of the others are chosen there")  # fmt: skip
    scenarios = [s for s in scenarios if s in tune_on] + [s for s in scenarios if s not in tune_on]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method `{m}`; choose from {list(METHODS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    chosen: dict[tuple[str, str], str] = {}
    tuned: dict[tuple[str, str], str] = {}  # where each chosen setting was chosen
    missing: list[str] = []  # --table-only: runs not measured yet
    for scenario in scenarios:
        config = quick_config(SCENARIOS[scenario], args.out) if args.quick else SCENARIOS[scenario]
        base = [*args.overrides]  # --quick: the tiny model of simulations/configs/continual.yaml first
        for method in methods:
            grid = grids.get(SETTING.get(method, ""), [None])
            if scenario not in tune_on and method in SETTING:  # the value chosen on the tuning scenario
                if (tune_on[0], method) not in chosen:  # --table-only: its grid there is incomplete
                    missing.append(f"{scenario} {method}: no setting chosen on {tune_on[0]}")
                    continue
                grid = [chosen[(tune_on[0], method)].split("=", 1)[1]]
            scored = []
            for value in grid:  # at the first seed: every value of the grid, scored on validation subjects
                name, overrides, label = variant(scenario, method, seeds[0], value, base)
                if args.table_only and not measured(args.out, name):
                    missing.append(name)
                    continue
                c, wall, run_dir = simulate(config, name, args.out, overrides)
                row = {**run_row(scenario, method, label, seeds[0], c, wall, run_dir), "overrides": overrides}
                runs.append(row)
                scored.append((row["val_final_average"], value))
            if len(scored) < len(grid):  # --table-only: a choice on part of the grid is not the recipe's choice
                missing.append(f"{scenario} {method}: grid incomplete at seed {seeds[0]}, not reported")
                runs = [r for r in runs if (r["scenario"], r["method"]) != (scenario, method)]
                continue
            best = max(scored, key=lambda t: t[0])[1] if grid != [None] else None  # max keeps the first of ties
            chosen[(scenario, method)] = variant(scenario, method, seeds[0], best, base)[2]
            if best is not None:
                where = scenario if scenario in tune_on else tune_on[0]
                tuned[(scenario, method)] = where
                print(f"--- {scenario} {method}: {chosen[(scenario, method)]} chosen on {where}'s validation "
                      f"macro-F1 ({', '.join(f'{v}: {s:.4f}' for s, v in scored)})", flush=True)  # fmt: skip
            for seed in seeds[1:]:
                name, overrides, label = variant(scenario, method, seed, best, base)
                if args.table_only and not measured(args.out, name):
                    missing.append(name)
                    continue
                c, wall, run_dir = simulate(config, name, args.out, overrides)
                runs.append({**run_row(scenario, method, label, seed, c, wall, run_dir), "overrides": overrides})
            write_outputs(runs, chosen, tuned, args.out, base)  # after every method: a cut-off run keeps its table
    write_outputs(runs, chosen, tuned, args.out, [*args.overrides])
    if missing:
        print("not measured (--table-only):\n  " + "\n  ".join(missing))
    print((args.out / "continual_table.md").read_text())
    print((args.out / "continual_targets.md").read_text())


def mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def summarise(runs: list[dict], chosen: dict[tuple[str, str], str]) -> list[dict]:
    """Per scenario and method: the chosen setting's runs over seeds."""
    table = []
    for (scenario, method), label in chosen.items():
        rows = [r for r in runs if r["scenario"] == scenario and r["method"] == method and r["setting"] == label]
        if not rows:
            continue
        col = {k: [r[k] for r in rows] for k in RUN_COLUMNS[4:12]}
        table.append({"scenario": scenario, "method": method, "setting": label or "-", "seeds": len(rows),
                      **{f"{k}_mean": float(np.mean(v)) for k, v in col.items()},
                      **{f"{k}_sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in col.items()},
                      **{k: mean_sd(v) for k, v in col.items() if k != "bytes_per_client_per_round"}})  # fmt: skip
    return table


def targets(table: list[dict]) -> list[str]:
    """The issue's targets, each with the measured value and whether it holds (a report: nothing is asserted)."""
    lines = ["| scenario | target | measured | holds |", "|---|---|---|---|"]
    for scenario in dict.fromkeys(t["scenario"] for t in table):
        rows = {t["method"]: t for t in table if t["scenario"] == scenario}
        if "naive" in rows:
            f = rows["naive"]["test_max_forgetting_mean"]
            lines.append(f"| {scenario} | naive forgets ≥ 0.05 macro-F1 on some earlier domain (max forgetting, "
                         f"mean over seeds) | {f:.3f} | {'yes' if f >= 0.05 else 'no'} |")  # fmt: skip
        methods = [m for m in rows if m not in ("naive", "joint")]
        if not methods or "joint" not in rows:
            continue
        default_bytes = rows["naive"]["bytes_per_client_per_round_mean"] if "naive" in rows else None
        best = max(methods, key=lambda m: rows[m]["val_final_average_mean"])  # chosen on validation subjects
        b = rows[best]
        gap = rows["joint"]["test_final_average_mean"] - b["test_final_average_mean"]
        lines.append(f"| {scenario} | best method ({best}, by validation final average): forgetting ≤ 0.02 | "
                     f"{b['test_forgetting_mean']:.3f} | {'yes' if b['test_forgetting_mean'] <= 0.02 else 'no'} |")
        lines.append(f"| {scenario} | {best}: final average within 0.02 of joint | joint − {best} = {gap:+.3f} | "
                     f"{'yes' if gap <= 0.02 else 'no'} |")  # fmt: skip
        if default_bytes:
            ratio = b["bytes_per_client_per_round_mean"] / default_bytes
            lines.append(f"| {scenario} | {best}: bytes per client per round ≤ the default's (naive's; 1 % "
                         f"allowed for message metadata) | {ratio:.3f} × | {'yes' if ratio <= BYTES_SLACK else 'no'} |")  # fmt: skip
    return lines


def write_outputs(runs: list[dict], chosen: dict, tuned: dict, out: Path, base: list[str]) -> None:
    table = summarise(runs, chosen)
    for t in table:
        if (where := tuned.get((t["scenario"], t["method"]))) is not None:
            t["setting"] = f"{t['setting']} ({where} val)"
    write_json(out / "continual_runs.json", {"runs": runs, "table": table, "overrides": base})
    write_csv(out / "continual_runs.csv", runs, RUN_COLUMNS)
    cols = ["scenario", "method", "setting", "seeds", "test_final_average", "test_forgetting", "test_max_forgetting",
            "test_bwt", "test_fwt", "val_final_average"]  # fmt: skip
    write_csv(out / "continual_table.csv", table, [*cols, "bytes_per_client_per_round_mean"])
    head = ["scenario", "method", "setting (chosen on)", "seeds", "final avg macro-F1", "forgetting",
            "max forgetting", "BWT", "FWT", "val final avg", "MB / client / round"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in table:
        lines.append("| " + " | ".join([*(str(t[c]) for c in cols),
                                        f"{t['bytes_per_client_per_round_mean'] / 1e6:.2f}"]) + " |")  # fmt: skip
    (out / "continual_table.md").write_text("\n".join(lines) + "\n")
    (out / "continual_targets.md").write_text("\n".join(targets(table)) + "\n")
    if table:
        scenarios = list(dict.fromkeys(t["scenario"] for t in table))
        fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.6), squeeze=False)
        for ax, scenario in zip(axes[0], scenarios):
            for t in (t for t in table if t["scenario"] == scenario):
                ax.errorbar(t["test_forgetting_mean"], t["test_final_average_mean"], xerr=t["test_forgetting_sd"],
                            yerr=t["test_final_average_sd"], fmt="o", capsize=3, label=t["method"])  # fmt: skip
            ax.set_title(scenario)
            ax.set_xlabel("forgetting (test macro-F1)")
            ax.set_ylabel("final average test macro-F1")
            ax.legend(fontsize=7)
        save_plot(fig, axes[0][-1], out / "continual_benchmark.png")


