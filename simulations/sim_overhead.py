"""Simulation overhead: ``fedhar simulate`` vs the same local training steps run sequentially in one process.

The sequential baseline does exactly the federated computation without Flower and Ray: the same
clients, sampling, seeds, local epochs (``fedhar.federated.client.train_client``), aggregation
and central evaluation each round, one client after another in one process. Both sides run as
fresh processes and are timed from start to exit; per-round time (rounds only, after start-up) is
compared too, and the rounds after the first (``steady``: round 1 also builds each Ray worker's
model, which the baseline does before its first round). The per-round metrics of the two must
agree, which shows the work is the same.

Two simulate variants:
* ``same-resources``: one client at a time with ``--threads`` torch threads (``max_concurrent_clients=1``,
  ``cpus_per_client=<threads>``), exactly the baseline's work and threads: the ratio is the
  engine's overhead (Ray start-up, worker processes, messages, serialisation);
* ``parallel``: the config's own Ray resources (clients side by side on all CPUs).

One torch thread per client is the default: on a small shared CPU, two threads per process
for this model size can be many times slower than one (thread contention), which would
swamp the overhead being measured.

    python simulations/sim_overhead.py --out runs/sim-overhead                        # configs/default.yaml
    python simulations/sim_overhead.py --out runs/sim-overhead --config configs/hapt.yaml federated.rounds=3

Writes sim_overhead.json / .csv / .md into --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from run_inputs import provenance

from fedhar.results.run import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
METRICS = ("val_macro_f1", "test_macro_f1", "test_accuracy", "test_loss")


def sequential(config: str, overrides: list[str], out: Path) -> None:
    """The same round loop on a Grid that runs each client in this process, one after another (no engine,
    no Ray); writes ``sequential.json``. The difference to ``fedhar simulate`` is the engine's cost."""
    from fedhar.environment import set_process_environment

    set_process_environment()  # as `fedhar simulate` runs: passive OpenMP threads, set before torch loads
    from fedhar.config import load_config
    from fedhar.federated.aggregation import check_strategy
    from fedhar.federated.data import simulated_partition
    from fedhar.federated.server import ServerJob, run_federation
    from fedhar.federated.transport import LocalGrid
    from fedhar.results.run import RunDir

    t_start = time.perf_counter()
    cfg = check_strategy(load_config(config, [*overrides, f"output_dir={out}", "name=sequential-run"]))
    parts, _ = simulated_partition(cfg)
    run = RunDir.create(cfg, kind="sequential")
    run_federation(LocalGrid(len(parts)), ServerJob(cfg, run, expected_nodes=len(parts), progress=False,
                                                    simulated=True))  # fmt: skip
    rows = [{k: r[k] for k in ("round", *METRICS, "round_seconds") if k in r}
            for r in json.loads(run.file("rounds.json").read_text())["rounds"]]  # fmt: skip
    for row in rows:
        print(f"round {row['round']}: test macro-F1 {row.get('test_macro_f1', float('nan')):.4f} "
              f"({row['round_seconds']} s)", flush=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    summary = {"rounds": rows, "seconds": time.perf_counter() - t_start, "run_dir": str(run.path)}
    write_json_atomic(out / "sequential.json", {**summary, "config": config, "overrides": overrides, **provenance()})


def timed(cmd: list[str], label: str) -> float:
    print(f"\n=== {label}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed (exit {proc.returncode})")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sim-overhead"))
    p.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    p.add_argument("--threads", type=int, default=1, help="torch threads of the baseline and of each client")
    p.add_argument("--sequential", action="store_true", help=argparse.SUPPRESS)  # the baseline's own process
    p.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = p.parse_args()
    out = args.out.resolve()
    if args.sequential:
        sequential(args.config, args.overrides, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    same = [f"federated.cpus_per_client={args.threads}", "federated.max_concurrent_clients=1"]
    variants = {"same-resources": same, "parallel": [f"federated.cpus_per_client={args.threads}"]}
    taken = [str(out / name) for name in ("sequential", *(f"simulate-{v}" for v in variants)) if (out / name).exists()]
    if taken:  # checked before anything runs: an earlier measurement is never half overwritten
        raise SystemExit(f"{', '.join(taken)} exist from an earlier measurement; choose another --out")
    results = []
    wall = timed([sys.executable, __file__, "--sequential", "--out", str(out / "sequential"), "--config", args.config,
                  *same, *args.overrides], "sequential (one process, no Flower/Ray)")  # fmt: skip
    seq = json.loads((out / "sequential" / "sequential.json").read_text())["rounds"]
    seq_rounds = sum(r["round_seconds"] for r in seq)
    seq_steady = sum(r["round_seconds"] for r in seq[1:])
    results.append({"variant": "sequential", "wall_seconds": round(wall, 2), "rounds_seconds": round(seq_rounds, 2),
                    "steady_rounds_seconds": round(seq_steady, 2)})  # fmt: skip
    for name, extra in variants.items():
        run_dir = out / f"simulate-{name}"
        cmd = [sys.executable, "-m", "fedhar.cli.main", "simulate", "--config", args.config, "--quiet",
               f"name=simulate-{name}", f"output_dir={out}", *extra, *args.overrides]  # fmt: skip
        wall = timed(cmd, f"simulate ({name})")
        rows = json.loads((run_dir / "rounds.json").read_text())["rounds"]
        rounds_s = sum(r["round_seconds"] for r in rows)
        steady_s = sum(r["round_seconds"] for r in rows[1:])  # round 1 also builds each worker's model
        same_metrics = all(abs(a.get(k, 0) - b.get(k, 0)) < 1e-9 for a, b in zip(rows, seq) for k in METRICS)
        results.append({"variant": f"simulate-{name}", "wall_seconds": round(wall, 2),
                        "rounds_seconds": round(rounds_s, 2),
                        "wall_ratio": round(wall / results[0]["wall_seconds"], 3),
                        "rounds_ratio": round(rounds_s / seq_rounds, 3),
                        "steady_rounds_seconds": round(steady_s, 2),
                        "steady_rounds_ratio": round(steady_s / seq_steady, 3) if seq_steady else None,
                        "metrics_equal_to_sequential": same_metrics})  # fmt: skip
    write_json_atomic(out / "sim_overhead.json", {"config": args.config, "overrides": args.overrides,
                                                  "threads": args.threads, "cpus": os.cpu_count(),
                                                  "results": results, **provenance()})  # fmt: skip
    cols = ["variant", "wall_seconds", "wall_ratio", "rounds_seconds", "rounds_ratio", "steady_rounds_seconds",
            "steady_rounds_ratio", "metrics_equal_to_sequential"]  # fmt: skip
    with (out / "sim_overhead.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(results)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in results]
    (out / "sim_overhead.md").write_text("\n".join(md) + "\n")
    print("\n" + "\n".join(md))


if __name__ == "__main__":
    main()
