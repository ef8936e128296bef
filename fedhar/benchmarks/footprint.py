"""What a simulation costs besides learning: wall time and peak memory of ``fedhar simulate`` (Ray workers
included), the simulation engine's overhead over the clients' own work, and loading HAPT into windows.

    python simulations/footprint.py simulate --out runs/sim-footprint        # `fedhar simulate` as shipped
    python simulations/footprint.py overhead --out runs/sim-overhead         # the engine's share of each round
    python simulations/footprint.py data --data ../shared/data/hapt-train --out runs/data-load
    python simulations/footprint.py STUDY --quick                            # minutes

Settings: simulations/configs/footprint.yaml. (The data study's child processes import only this module's
light imports: its peak RSS is that of one load.)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedhar.benchmarks.recipe import dispatch, parse
from fedhar.benchmarks.runner import FEDHAR, REPO, measure_tree


def write_json(path: Path, record: dict) -> None:
    from fedhar.benchmarks.results import write_json as write

    write(path, record)


# ---- simulate: wall time and peak memory of one `fedhar simulate`, its whole process tree ----------------


def simulate(argv: list[str] | None = None) -> None:
    """Wall time and peak memory of ``fedhar simulate`` (the embedded default unless told otherwise), Ray workers
    included.

    Runs the command in a fresh process and samples its whole process tree (the driver, Ray's GCS / raylet /
    helpers and the worker processes that train the clients) every ``--interval`` seconds. Reports the peak
    of the summed RSS (counts shared library pages once per process, an upper bound), the peak of the summed
    PSS (shared pages split between processes: the honest total), the driver's own peak RSS, the peak number
    of processes, and whether any process of the tree outlived the command.

        python simulations/footprint.py simulate --out runs/sim-footprint          # `fedhar simulate` as shipped
        python simulations/footprint.py simulate --out runs/x -- --config configs/hapt.yaml federated.rounds=2

    Writes sim_footprint.json into --out (the run folder goes there too).
    """
    p = argparse.ArgumentParser(prog="footprint.py simulate", description=inspect.cleandoc(simulate.__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sim-footprint"))
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("overrides", nargs="*", help="arguments for `fedhar simulate` (after --)")
    args = parse(p, argv, "footprint", "simulate")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*FEDHAR, "simulate", *args.overrides, f"output_dir={out}"]  # options first
    print("running:", " ".join(cmd[2:]), flush=True)
    result = {"command": " ".join(cmd[2:]), **measure_tree(cmd, args.interval)}
    runs = sorted(out.glob("*/metrics.json"), key=lambda f: f.stat().st_mtime)
    result["run_dir"] = str(runs[-1].parent) if runs else None
    write_json(out / "sim_footprint.json", result)
    print(json.dumps(result, indent=2))
    if result["exit_code"] != 0:
        raise SystemExit(result["exit_code"])


# ---- overhead: the engine's share of each round, from the timings `fedhar simulate` records ---------------

OVERHEAD_COLUMNS = ["variant", "wall_seconds", "setup_seconds", "rounds_seconds", "clients_seconds",
                    "central_eval_seconds", "engine_seconds", "rounds_ratio", "steady_rounds_ratio"]  # fmt: skip


def round_overheads(rounds: dict) -> dict:
    """From a run's rounds.json: the rounds' wall time, the clients' own time on their messages (``client_seconds``:
    decoding, training, encoding, summed over the round's clients), the server's central evaluation, and what
    is left (``engine_seconds``: Flower's messaging, Ray, serialisation, aggregation). ``rounds_ratio``: rounds
    over the work done inside them (clients + central evaluation), the sequential cost of that work; ``steady``:
    rounds after the first (round 1 also builds each Ray worker's model)."""
    rows = rounds["rounds"]
    clients: dict[int, float] = {}
    for c in rounds["clients"]:
        clients[int(c["round"])] = clients.get(int(c["round"]), 0.0) + float(c["client_seconds"])
    per_round = [{"round": r["round"], "round_seconds": r["round_seconds"], "clients_seconds": clients.get(r["round"], 0.0),
                  "central_eval_seconds": r.get("central_eval_seconds", 0.0)} for r in rows]  # fmt: skip
    for r in per_round:
        r["engine_seconds"] = r["round_seconds"] - r["clients_seconds"] - r["central_eval_seconds"]

    def total(key: str, rs: list[dict]) -> float:
        return sum(r[key] for r in rs)

    def ratio(rs: list[dict]) -> float | None:
        work = total("clients_seconds", rs) + total("central_eval_seconds", rs)
        return round(total("round_seconds", rs) / work, 3) if work else None

    return {"rounds_seconds": round(total("round_seconds", per_round), 2),
            "clients_seconds": round(total("clients_seconds", per_round), 2),
            "central_eval_seconds": round(total("central_eval_seconds", per_round), 2),
            "engine_seconds": round(total("engine_seconds", per_round), 2),
            "rounds_ratio": ratio(per_round), "steady_rounds_ratio": ratio(per_round[1:]),
            "per_round": per_round}  # fmt: skip


def overhead(argv: list[str] | None = None) -> None:
    """The simulation engine's overhead: how much of each ``fedhar simulate`` round is not the clients' or the
    server's own work.

    Times the real engine, nothing beside it: each variant is one ``fedhar simulate`` in a fresh process, timed
    from start to exit (``setup_seconds``: everything outside the rounds — imports, data, Ray's start-up);
    inside every round the clients report their time on the message (``client_seconds`` in rounds.json) and
    the server its central evaluation, and the rest of the round is the engine's (Flower's messaging, Ray,
    serialisation, aggregation). Two variants:

    * ``same-resources``: one client at a time with ``--threads`` torch threads (``max_concurrent_clients=1``,
      ``cpus_per_client=<threads>``): the round's work runs back to back, so ``rounds_ratio`` (rounds over the
      work inside them) is the engine's overhead on running that work sequentially;
    * ``parallel``: the config's own Ray resources (clients side by side on all CPUs): below 1 when running
      clients side by side gains more than the engine costs.

    One torch thread per client is the default: on a small shared CPU, two threads per process for this model
    size can be many times slower than one (thread contention), which would swamp the overhead measured.

        python simulations/footprint.py overhead --out runs/sim-overhead                    # configs/default.yaml
        python simulations/footprint.py overhead --out runs/sim-overhead-hapt --config configs/hapt.yaml federated.rounds=3

    Writes sim_overhead.json / .csv / .md into --out (the run folders too).
    """
    p = argparse.ArgumentParser(prog="footprint.py overhead", description=inspect.cleandoc(overhead.__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sim-overhead"))
    p.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    p.add_argument("--threads", type=int, default=1, help="torch threads of each client")
    p.add_argument("overrides", nargs="*", help="config overrides for every run")
    args = parse(p, argv, "footprint", "overhead")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    same = [f"federated.cpus_per_client={args.threads}", "federated.max_concurrent_clients=1"]
    variants = {"same-resources": same, "parallel": [f"federated.cpus_per_client={args.threads}"]}
    taken = [str(out / f"simulate-{v}") for v in variants if (out / f"simulate-{v}").exists()]
    if taken:  # checked before anything runs: an earlier measurement is never half overwritten
        raise SystemExit(f"{', '.join(taken)} exist from an earlier measurement; choose another --out")
    from fedhar.benchmarks.results import write_csv, write_markdown

    results = []
    for name, extra in variants.items():
        cmd = [*FEDHAR, "simulate", "--config", args.config, "--quiet", f"name=simulate-{name}", f"output_dir={out}",
               *extra, *args.overrides]  # fmt: skip
        print(f"\n=== simulate ({name}): {' '.join(cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"simulate ({name}) failed (exit {proc.returncode})")
        timings = round_overheads(json.loads((out / f"simulate-{name}" / "rounds.json").read_text()))
        results.append({"variant": f"simulate-{name}", "wall_seconds": round(wall, 2),
                        "setup_seconds": round(wall - timings["rounds_seconds"], 2), **timings})  # fmt: skip
    write_json(out / "sim_overhead.json", {"config": args.config, "overrides": args.overrides, "threads": args.threads,
                                           "cpus": os.cpu_count(), "results": results})  # fmt: skip
    write_csv(out / "sim_overhead.csv", results, OVERHEAD_COLUMNS)
    print("\n" + "\n".join(write_markdown(out / "sim_overhead.md", results, OVERHEAD_COLUMNS)))


# ---- data: loading HAPT into windows ----------------------------------------------------------------------

BASIC6 = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
TARGETS = {"cold_s": 30.0, "cached_s": 3.0, "peak_rss_mb": 1024.0}


def child(mode: str, data: str, cache: str) -> None:
    """One measurement; prints a JSON line."""
    from fedhar.config import DataConfig
    from fedhar.data.pipeline import load_windows

    cfg = DataConfig(
        dataset="hapt", path=data, window=128, overlap=0.5, sample_rate=50.0, classes=BASIC6, cache_dir=cache
    )
    t0 = time.perf_counter()
    ws = load_windows(cfg, use_cache=mode != "cold")
    seconds = time.perf_counter() - t0
    result = {
        "mode": mode,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
        "cache_hit": bool(ws.notes.get("cache_hit")),
        "windows": len(ws),
        "per_class": dict(zip(ws.label_names, ws.class_counts().tolist())),
        "per_subject": {s: sum(c) for s, c in ws.counts_by("subject").items()},
        "skipped": ws.notes.get("skipped", []),
    }
    print(json.dumps(result))


def run_child(mode: str, data: str, cache: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedhar.benchmarks.footprint", "data", "--child", mode, "--data", data, "--cache", cache],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - t0, 3)
    return result


def data_load(argv: list[str] | None = None) -> None:
    """How long and how much memory turning the HAPT training copy into windows takes.

    Settings: 128-sample windows, 50 % overlap, 50 Hz, the 6 basic activities (WALKING..LAYING).
    Every measurement runs in a fresh Python process, so its peak RSS (``ru_maxrss``) is that of
    one load, interpreter and imports included:

    - ``cold``: ``load_windows(use_cache=False)``: read the text files, relabel, window;
    - ``fill``: ``load_windows`` into an empty cache folder (cold work plus writing the cache);
    - ``cached``: ``load_windows`` again, answered from the cache.

    Prints the figures and writes ``data_load_benchmark.json`` into ``--out``. Targets: cold <= 30 s,
    cached <= 3 s, peak RSS <= 1 GB.

        python simulations/footprint.py data --data ../shared/data/hapt-train --out runs/data-load
    """
    parser = argparse.ArgumentParser(prog="footprint.py data", description=inspect.cleandoc(data_load.__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "hapt-train"))
    parser.add_argument("--out", default="runs/data-load")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the cold and cached measurements")
    parser.add_argument("--child", choices=["cold", "fill", "cached"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parse(parser, argv, "footprint", "data")
    if args.child:
        child(args.child, args.data, args.cache)
        return
    if not (Path(args.data) / "RawData" / "labels.txt").is_file():
        raise SystemExit(f"{args.data} is not a HAPT copy (no RawData/labels.txt); pass --data")
    with tempfile.TemporaryDirectory(prefix="fedhar-bench-cache-") as cache:
        cold = [run_child("cold", args.data, cache) for _ in range(args.repeats)]
        fill = run_child("fill", args.data, cache)
        cached = [run_child("cached", args.data, cache) for _ in range(args.repeats)]
    if fill["cache_hit"] or not all(c["cache_hit"] for c in cached) or any(c["cache_hit"] for c in cold):
        raise SystemExit("cache misbehaved: cold runs must miss, the fill run must write, cached runs must hit")
    runs = cold + [fill] + cached
    figures = {
        "cold_s": statistics.median(r["seconds"] for r in cold),
        "fill_s": fill["seconds"],
        "cached_s": statistics.median(r["seconds"] for r in cached),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "peak_rss_mb_cold": max(r["peak_rss_mb"] for r in cold),
        "peak_rss_mb_cached": max(r["peak_rss_mb"] for r in cached),
    }
    report = {
        "data": str(Path(args.data).resolve()),
        "settings": {"dataset": "hapt", "window": 128, "overlap": 0.5, "sample_rate_hz": 50.0, "classes": BASIC6},
        "figures": figures,
        "targets": TARGETS,
        "meets_targets": {k: figures[k] <= v for k, v in TARGETS.items()},
        "windows": cold[0]["windows"],
        "windows_per_class": cold[0]["per_class"],
        "windows_per_subject": cold[0]["per_subject"],
        "skipped": cold[0]["skipped"],
        "runs": runs,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "data_load_benchmark.json", report)
    print(f"HAPT training copy → {report['windows']} windows (128 samples, 50 % overlap, 6 classes)")
    for key, target in TARGETS.items():
        verdict = "ok" if report["meets_targets"][key] else "OVER TARGET"
        print(f"  {key:12s} {figures[key]:8.2f}  (target <= {target:g}: {verdict})")
    print(f"  fill_s       {figures['fill_s']:8.2f}  (cold load + writing the cache)")
    print("  windows per class:  " + ", ".join(f"{k} {v}" for k, v in report["windows_per_class"].items()))
    print("  windows per subject: " + ", ".join(f"{k}: {v}" for k, v in report["windows_per_subject"].items()))
    print(f"  wrote {out / 'data_load_benchmark.json'}")


def main(argv: list[str] | None = None) -> None:
    dispatch({"simulate": simulate, "overhead": overhead, "data": data_load}, argv, __doc__)


if __name__ == "__main__":  # the data study's child processes: `python -m fedhar.benchmarks.footprint data --child`
    main()
