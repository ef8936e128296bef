"""Wall time and peak memory of ``fedhar simulate`` (the embedded default unless told otherwise), Ray workers included.

Runs the command in a fresh process and samples its whole process tree (the driver, Ray's
GCS / raylet / helpers and the worker processes that train the clients) every ``--interval``
seconds. Reports the peak of the summed RSS (counts shared library pages once per process, an
upper bound), the peak of the summed PSS (shared pages split between processes: the honest
total), the driver's own peak RSS, the peak number of processes, and whether any process of the
tree outlived the command.

    python simulations/sim_footprint.py --out runs/sim-footprint                 # `fedhar simulate` as shipped
    python simulations/sim_footprint.py --out runs/x -- --config configs/hapt.yaml federated.rounds=2

Writes sim_footprint.json into --out (the run folder goes there too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
from run_inputs import provenance

from fedhar.results.run import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sample(procs: list[psutil.Process]) -> tuple[float, float, int]:
    """(RSS sum, PSS sum) in MB and the number of live processes."""
    rss = pss = 0.0
    alive = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        alive += 1
    return rss / 2**20, pss / 2**20, alive


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sim-footprint"))
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("args", nargs="*", help="arguments for `fedhar simulate` (after --)")
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fedhar.cli.main", "simulate", *args.args, f"output_dir={out}"]  # options first
    print("running:", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    root = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    peak_rss = peak_pss = driver_rss = 0.0
    peak_procs = 0
    while proc.poll() is None:
        procs = tree(root)
        seen.update({q.pid: q for q in procs})
        rss, pss, alive = sample(procs)
        peak_rss, peak_pss, peak_procs = max(peak_rss, rss), max(peak_pss, pss), max(peak_procs, alive)
        try:
            driver_rss = max(driver_rss, root.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            pass
        time.sleep(args.interval)
    wall = time.perf_counter() - t0
    time.sleep(2.0)
    left = [q.pid for q in seen.values() if q.pid != proc.pid and q.is_running() and q.status() != psutil.STATUS_ZOMBIE]
    runs = sorted(out.glob("*/metrics.json"), key=lambda f: f.stat().st_mtime)
    result = {
        "command": " ".join(cmd[2:]),
        "exit_code": proc.returncode,
        "wall_seconds": round(wall, 1),
        "peak_rss_sum_mb": round(peak_rss, 1),
        "peak_pss_sum_mb": round(peak_pss, 1),
        "driver_peak_rss_mb": round(driver_rss, 1),
        "peak_processes": peak_procs,
        "processes_seen": len(seen),
        "processes_left_after_exit": left,
        "cpus": psutil.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in psutil.getloadavg()],
        "run_dir": str(runs[-1].parent) if runs else None,
    }
    write_json_atomic(out / "sim_footprint.json", {**result, **provenance()})
    print(json.dumps(result, indent=2))
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
