"""How long and how much memory turning the HAPT training copy into windows takes.

Settings: 128-sample windows, 50 % overlap, 50 Hz, the 6 basic activities (WALKING..LAYING).
Every measurement runs in a fresh Python process, so its peak RSS (``ru_maxrss``) is that of
one load, interpreter and imports included:

- ``cold``: ``load_windows(use_cache=False)``: read the text files, relabel, window;
- ``fill``: ``load_windows`` into an empty cache folder (cold work plus writing the cache);
- ``cached``: ``load_windows`` again, answered from the cache.

Prints the figures and writes ``data_load_benchmark.json`` into ``--out``. Targets: cold <= 30 s,
cached <= 3 s, peak RSS <= 1 GB.

    python simulations/data_load_benchmark.py --data ../shared/data/hapt-train --out runs/data-load
"""

from __future__ import annotations

import argparse
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

from run_inputs import provenance

from fedhar.results.run import write_json_atomic

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
        [sys.executable, __file__, "--child", mode, "--data", data, "--cache", cache],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - t0, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "hapt-train"))
    parser.add_argument("--out", default="runs/data-load")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the cold and cached measurements")
    parser.add_argument("--child", choices=["cold", "fill", "cached"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
    write_json_atomic(out / "data_load_benchmark.json", {**report, **provenance()})
    print(f"HAPT training copy → {report['windows']} windows (128 samples, 50 % overlap, 6 classes)")
    for key, target in TARGETS.items():
        verdict = "ok" if report["meets_targets"][key] else "OVER TARGET"
        print(f"  {key:12s} {figures[key]:8.2f}  (target <= {target:g}: {verdict})")
    print(f"  fill_s       {figures['fill_s']:8.2f}  (cold load + writing the cache)")
    print("  windows per class:  " + ", ".join(f"{k} {v}" for k, v in report["windows_per_class"].items()))
    print("  windows per subject: " + ", ".join(f"{k}: {v}" for k, v in report["windows_per_subject"].items()))
    print(f"  wrote {out / 'data_load_benchmark.json'}")


if __name__ == "__main__":
    main()
