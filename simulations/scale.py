"""Cost as the population grows: ``fedhar simulate`` at populations of 10, 100, 1,000… with a fixed number per round.

Each population is a fresh ``fedhar simulate`` process on synthetic data with one small user per client
(``data.synthetic.subjects`` = population + 2: subject 1 validates, subject 2 tests, every other subject is a
client of ~26 windows, ``federated.partition=subject``), ``federated.clients_per_round`` clients per round
(default 10), the tiny untrained backbone (``model.backbone=tiny-llama``), a window cache of its own (set-up
includes generating and windowing the data). Its process tree is sampled every ``--interval`` seconds
(``fedhar.benchmarks.runner.tree``), and per population the recipe reports:

* **set-up**: process start to the server's first round (imports, data, Ray start, every node described once);
  ``server_setup_seconds``: the server's part of it (describing the federation, fitting the normaliser);
* **round time**: median of the rounds' ``round_seconds`` (server: sample → train → aggregate → evaluate);
  ``steady``: rounds after the first;
* **peak RSS**: the driver (the ``fedhar simulate`` process: server loop and Flower's engine), the Ray worker
  processes that run the clients (sum, and the largest one), Ray's other processes (GCS, raylet…);
* **bytes per round** (median of ``bytes_total``) and the size of the results files;
* **Flower's engine**: the driver's time in ``InMemoryLinkState.get_message_ins``, which the simulation engine
  calls for *every* node every 0.1 s whether or not it has a message, scanning every stored message each time
  (the one place found whose cost per round grows with the population itself).

    python simulations/scale.py --out runs/scale --quick                          # 10, 100, 1000; 4 rounds
    python simulations/scale.py --out runs/scale --populations 10,100,1000,10000 --rounds 5

Settings (and --quick): simulations/configs/scale.yaml. Writes scale.json / scale.csv / scale.png into --out
(the run folders under --out/runs). The script keeps its child (``--child``) itself: it times a Flower internal,
which fedhar's package reaches only through fedhar/deploy/flower_internals.py.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from fedhar.benchmarks.recipe import parse
from fedhar.benchmarks.runner import provenance, tree
from fedhar.results.run import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
#: the tiny synthetic federation of robustness.py's --quick (simulations/configs/robustness.yaml), one device and placement per user
TINY = ["data.dataset=synthetic", "data.synthetic.seconds_per_activity=4", "data.synthetic.devices=[phone-a]",
        "data.synthetic.placements=[waist]", "data.window=64", "data.split.val=[1]", "data.split.test=[2]",
        "model.backbone=tiny-llama", "model.num_layers=2", "model.tokens=8", "model.conv_channels=16",
        "train.batch_size=16", "federated.partition=subject", "federated.min_clients=2"]  # fmt: skip
COLUMNS = ["population", "clients_per_round", "rounds", "setup_seconds", "server_setup_seconds", "setup_queries",
           "round_seconds_median", "round_seconds_median_steady", "driver_peak_rss_mb", "ray_workers_peak_rss_mb",
           "ray_worker_max_rss_mb", "ray_other_peak_rss_mb", "bytes_per_round", "results_file_bytes",
           "run_dir_bytes", "engine_poll_calls_per_s", "engine_poll_cpu_share", "wall_seconds"]  # fmt: skip
RESULT_FILES = ("rounds.json", "rounds.csv", "clients.csv", "federation.json", "metrics.json")
SETUP_LINE = re.compile(r"clients, rounds \d+\.\.\d+")  # the server's line once the federation is described


# ---- the child: `fedhar simulate` with Flower's polling timed ----------------------------------------


def child(probe: Path, argv: list[str]) -> int:
    """Run ``fedhar simulate argv`` in this process, timing the engine's per-node polling into ``probe``."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    original = InMemoryLinkState.get_message_ins
    seconds: dict[int, list[float]] = {}  # wall second → [calls, seconds inside]

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            slot = seconds.setdefault(int(time.time()), [0, 0.0])
            slot[0] += 1
            slot[1] += time.perf_counter() - t0

    InMemoryLinkState.get_message_ins = timed
    atexit.register(lambda: probe.write_text(json.dumps({str(k): v for k, v in sorted(seconds.items())})))
    from fedhar.cli.main import main as fedhar_main

    return fedhar_main(["simulate", *argv])


# ---- the parent: one population ------------------------------------------------------------------------


def classify(procs: list[psutil.Process], root: int) -> dict[str, list[float]]:
    """RSS in MB of the driver, the Ray workers (the processes running ClientApps), and Ray's other processes."""
    out: dict[str, list[float]] = {"driver": [], "workers": [], "other": []}
    for p in procs:
        try:
            rss = p.memory_info().rss / 2**20
            line = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        kind = "driver" if p.pid == root else "workers" if ("default_worker.py" in line or line.startswith("ray::")) \
            else "other"  # fmt: skip
        out[kind].append(rss)
    return out


def run_population(population: int, k: int, rounds: int, out: Path, interval: float, extra: list[str]) -> dict:
    name = f"pop-{population}"
    runs = out / "runs"
    shutil.rmtree(runs / name, ignore_errors=True)
    cache = out / "cache" / name
    shutil.rmtree(cache, ignore_errors=True)
    probe = out / f"{name}.engine.json"
    overrides = [*TINY, f"data.synthetic.subjects={population + 2}", f"data.cache_dir={cache}",
                 f"federated.clients_per_round={min(k, population)}", f"federated.rounds={rounds}",
                 f"name={name}", f"output_dir={runs}", *extra]  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(probe), "--", *overrides]
    print(f"population {population}: fedhar simulate {' '.join(overrides)}", flush=True)
    t_wall0, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    marks: dict[str, float] = {}
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "setup" not in marks and SETUP_LINE.search(line):
                marks["setup"] = time.perf_counter() - t0
                marks["setup_wall"] = time.time()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    peak = {"driver": 0.0, "workers": 0.0, "worker_max": 0.0, "other": 0.0}
    while proc.poll() is None:
        rss = classify(tree(root), proc.pid)
        peak["driver"] = max(peak["driver"], sum(rss["driver"]))
        peak["workers"] = max(peak["workers"], sum(rss["workers"]))
        peak["worker_max"] = max(peak["worker_max"], max(rss["workers"], default=0.0))
        peak["other"] = max(peak["other"], sum(rss["other"]))
        time.sleep(interval)
    reader.join(timeout=10)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print("\n".join(lines[-30:]))
        raise SystemExit(f"population {population}: fedhar simulate failed (exit {proc.returncode})")
    run = runs / name
    metrics = json.loads((run / "metrics.json").read_text())
    rows = json.loads((run / "rounds.json").read_text())["rounds"]
    seconds = [r["round_seconds"] for r in rows]
    engine = json.loads(probe.read_text()) if probe.is_file() else {}
    start = marks.get("setup_wall", t_wall0)  # the engine's polling during the rounds, not the set-up
    during = [v for s, v in engine.items() if int(s) >= start]
    span = max(1, len(during))
    return {
        "population": population,
        "clients_per_round": min(k, population),
        "rounds": len(rows),
        "setup_seconds": round(marks.get("setup", float("nan")), 1),
        "server_setup_seconds": metrics.get("server_setup_seconds"),
        "setup_queries": metrics.get("setup_queries"),
        "round_seconds_median": round(statistics.median(seconds), 3),
        "round_seconds_median_steady": round(statistics.median(seconds[1:] or seconds), 3),
        "round_seconds": seconds,
        "driver_peak_rss_mb": round(peak["driver"], 1),
        "ray_workers_peak_rss_mb": round(peak["workers"], 1),
        "ray_worker_max_rss_mb": round(peak["worker_max"], 1),
        "ray_other_peak_rss_mb": round(peak["other"], 1),
        "bytes_per_round": int(statistics.median(r["bytes_total"] for r in rows)),
        "results_file_bytes": sum((run / f).stat().st_size for f in RESULT_FILES if (run / f).is_file()),
        "results_files": {f: (run / f).stat().st_size for f in RESULT_FILES if (run / f).is_file()},
        "run_dir_bytes": sum(p.stat().st_size for p in run.rglob("*") if p.is_file()),
        "engine_poll_calls_per_s": round(sum(v[0] for v in during) / span, 1),
        "engine_poll_cpu_share": round(sum(v[1] for v in during) / span, 4),  # seconds inside per wall second
        "wall_seconds": round(wall, 1),
        "run_dir": str(run),
    }


# ---- tabulate -------------------------------------------------------------------------------------------


def targets(rows: list[dict]) -> dict:
    """The issue's targets, where the populations measured include 10 and 1,000."""
    by = {r["population"]: r for r in rows}
    if 10 not in by or 1000 not in by:
        return {}
    small, big = by[10], by[1000]
    # rounds after the first: round 1 also builds each Ray worker's model (the same at every population)
    ratio = big["round_seconds_median_steady"] / small["round_seconds_median_steady"]
    growth = big["driver_peak_rss_mb"] - small["driver_peak_rss_mb"]
    return {
        "steady_round_time_ratio_1000_vs_10": {"value": round(ratio, 2), "target": "<= 1.3", "holds": ratio <= 1.3},
        "server_peak_rss_growth_mb_10_to_1000": {"value": round(growth, 1), "target": "<= 200", "holds": growth <= 200},
        "setup_seconds_at_1000": {"value": big["setup_seconds"], "target": "< 300", "holds": big["setup_seconds"] < 300},
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["population"] for r in rows]
    panels = [("set-up (s)", ["setup_seconds", "server_setup_seconds"]),
              ("round time, median (s)", ["round_seconds_median", "round_seconds_median_steady"]),
              ("driver peak RSS (MB)", ["driver_peak_rss_mb"]),
              ("Ray peak RSS (MB)", ["ray_workers_peak_rss_mb", "ray_worker_max_rss_mb", "ray_other_peak_rss_mb"]),
              ("bytes per round (MB)", ["bytes_per_round"]),
              ("results files (kB)", ["results_file_bytes"])]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            scale = 1e-6 if key == "bytes_per_round" else 1e-3 if key == "results_file_bytes" else 1.0
            ax.plot(x, [r[key] * scale for r in rows], marker="o", label=key)
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("population (clients)")
        ax.set_ylim(bottom=0)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    k = rows[0]["clients_per_round"] if rows else 0
    fig.suptitle(f"fedhar simulate vs population ({k} clients per round, tiny backbone, synthetic users)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        raise SystemExit(child(Path(sys.argv[2]), sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/scale"))
    p.add_argument("--populations", default="10,100,1000", help="comma-separated populations (clients)")
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples of the process tree")
    p.add_argument("overrides", nargs="*", help="more `fedhar simulate` key=value overrides (after --)")
    args = parse(p, None, "scale")  # --quick: 4 rounds per population (simulations/configs/scale.yaml)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rounds = args.rounds
    rows = []
    for population in [int(v) for v in args.populations.split(",") if v.strip()]:
        row = run_population(population, args.clients_per_round, rounds, out, args.interval, args.overrides)
        rows.append(row)
        print(json.dumps({k: row[k] for k in COLUMNS}), flush=True)
        with open(out / "scale.csv", "w", newline="") as f:  # after every population: a long run keeps its rows
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        write_json_atomic(out / "scale.json", {"rows": rows, "targets": targets(rows),
                                               "machine": {"cpus": os.cpu_count(),
                                                           "load_average": [round(x, 2) for x in os.getloadavg()]},
                                               **provenance()})  # fmt: skip
        plot(rows, out / "scale.png")
    print(json.dumps(targets(rows), indent=2))


if __name__ == "__main__":
    main()
