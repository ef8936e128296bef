"""The one runner every recipe shares: ``fedhar train`` / ``fedhar simulate`` in fresh processes, finished runs
reused only when measured with the settings asked for now, process trees sampled for wall time and peak memory,
and the provenance recorded beside every result.

A fresh process per variant makes peak RSS and wall time per variant honest (nothing cached in memory from the
previous one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

from fedhar.config import ExperimentConfig, load_config
from fedhar.errors import FedharError

#: the ``fedhar`` command, as a fresh process of this Python
FEDHAR = [sys.executable, "-m", "fedhar.cli.main"]
#: the repository the recipes run from (``configs/``, ``simulations/``, ``../shared/data``)
REPO = Path(__file__).resolve().parents[2]


# ---- provenance ------------------------------------------------------------------------------------------


def provenance(**extra) -> dict:
    """Command, working folder, package versions and git revision: recorded beside every recipe result."""
    from fedhar.results.run import git_revision, versions

    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cwd": os.getcwd(),
            "versions": versions(), "git": git_revision(), **extra}  # fmt: skip


# ---- fresh-process runs ----------------------------------------------------------------------------------


def run_fresh(cmd: list[str], name: str) -> float:
    """Run one variant's command in a fresh process; its wall seconds, or a stop naming the command."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    return time.perf_counter() - t0


def train_variant(config: str, name: str, out: Path, overrides: list[str]) -> dict:
    """One `fedhar train` run; returns its metrics.json plus the variant name."""
    cmd = [*FEDHAR, "train", "--config", config, "--quiet", f"name={name}", f"output_dir={out}", *overrides]
    print(f"\n=== {name}: {' '.join(overrides) or '(config defaults)'}", flush=True)
    t0 = time.perf_counter()
    run_fresh(cmd, name)
    run_dir = written_run_dir(out, name)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["variant"] = name
    metrics["overrides"] = overrides
    metrics["run_dir"] = str(run_dir)
    print(f"    done in {time.perf_counter() - t0:.0f} s: test macro-F1 {metrics['test']['macro_f1']:.4f}", flush=True)
    return metrics


def simulate_variant(config: str | None, name: str, out: Path, overrides: list[str],
                     result: str = "metrics.json") -> tuple[dict, float | None, Path]:
    """One ``fedhar simulate`` run, or the one finished before with the same settings (its wall time then None);
    returns the run's ``result`` file (``metrics.json``, ``continual.json``), the wall seconds and the folder."""
    run_dir = out / name
    if (run_dir / result).is_file():
        check_reusable(run_dir, config, overrides, kind="simulate")
        print(f"=== {name}: measured before ({run_dir})", flush=True)
        return json.loads((run_dir / result).read_text()), None, run_dir
    cmd = [*FEDHAR, "simulate", *(["--config", config] if config else []), "--quiet", f"name={name}",
           f"output_dir={out}", *overrides]  # fmt: skip
    print(f"\n=== {name}: {' '.join(overrides)}", flush=True)
    wall = run_fresh(cmd, name)
    return json.loads((run_dir / result).read_text()), wall, run_dir


# ---- finished runs: found, and reused only with the same settings ----------------------------------------


def finished_run_dir(out: Path, name: str) -> Path | None:
    """The folder a finished run called ``name`` wrote: ``name`` itself, or ``name-2``, ``name-3``… when the name
    was taken (never ``name-other``), the newest if several; None when none finished."""
    pattern = re.compile(rf"{re.escape(name)}(-\d+)?")
    found = [p for p in out.glob(f"{name}*/metrics.json") if pattern.fullmatch(p.parent.name)]
    return max(found, key=lambda p: p.stat().st_mtime).parent if found else None


def written_run_dir(out: Path, name: str) -> Path:
    """:func:`finished_run_dir` of a run that just ended successfully: it must be there."""
    run_dir = finished_run_dir(out, name)
    if run_dir is None:
        raise SystemExit(f"no finished run `{name}` under {out} (no metrics.json)")
    return run_dir


def measured_before(results: dict, name: str, config: str, overrides: list[str], kind: str = "train") -> bool:
    """Whether ``name`` is already measured in this recipe's results, with the settings asked for now; a run
    measured with other settings stops the recipe (:func:`check_reusable`) instead of being reported."""
    if name not in results:
        return False
    run_dir = Path(results[name]["run_dir"])
    if (run_dir / "config.yaml").is_file():
        check_reusable(run_dir, config, overrides, kind)
        print(f"{name}: already measured in {run_dir}")
    else:
        print(f"{name}: already measured in {run_dir} (that folder is gone: its settings are not re-checked)")
    return True


#: settings that name or place a run, or split the CPU between parallel runs, without changing what it measures
NOT_SETTINGS = ("name", "output_dir", "train.num_threads")


def settings_differ(run_dir: Path, config: str | Path | None, overrides: list[str], kind: str = "train") -> list[str]:
    """Config keys whose value in a finished run differs from what ``config`` + ``overrides`` gives now: a recipe
    reusing that run by name would report figures measured with other settings. A centralized (``train``)
    run ignores the ``federated`` section, which it never reads."""
    ignored = NOT_SETTINGS + (("federated.",) if kind == "train" else ())
    saved = _flat(load_config(run_dir / "config.yaml").to_dict())
    now = load_config(config, overrides)
    if kind == "simulate":  # as `fedhar simulate` saves it: with what the strategy implies (FFA-LoRA freezes A)
        from fedhar.federated.aggregation import check_strategy

        now = check_strategy(now)
    now = _flat(now.to_dict())
    return sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k) and not k.startswith(ignored))


def check_reusable(run_dir: Path, config: str | Path | None, overrides: list[str], kind: str = "train") -> None:
    """Refuse to reuse a finished run measured with other settings, naming them and the fix."""
    differ = settings_differ(run_dir, config, overrides, kind)
    if differ:
        shown = ", ".join(differ[:6]) + (" …" if len(differ) > 6 else "")
        raise SystemExit(f"{run_dir} was measured with other settings ({shown}) than this command asks for; pass "
                         "another --out, or delete that run folder to measure it again")  # fmt: skip


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---- trained runs as input (recipes that re-score checkpoints) -------------------------------------------


def add_run_arguments(p: argparse.ArgumentParser, runs_help: str) -> None:
    """``runs`` (run folders of `fedhar train`) and ``--set KEY=VALUE`` (repeatable) overriding every run's config.

    Overrides are an option, not a positional list after ``runs``: argparse would hand them to ``runs``."""
    p.add_argument("runs", nargs="*", type=Path, help=runs_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override every run's saved config, e.g. --set data.path=/data/hapt-train when the data "
                        "moved or the recipe runs from another folder (repeatable)")  # fmt: skip


def check_runs(runs: list[Path]) -> None:
    missing = [str(r) for r in runs if not (r / "checkpoint").is_dir() or not (r / "config.yaml").is_file()]
    if missing:
        raise SystemExit(f"no checkpoint/ or config.yaml in {', '.join(missing)}: pass run folders of `fedhar train`")


def run_config(run: Path, overrides: list[str], roles: tuple[str, ...] = ("val", "test")) -> ExperimentConfig:
    """The run's saved config with ``overrides``; one clear line when it cannot be re-scored here: a split
    without the named subject roles, or data that are not recordings on disk."""
    try:
        cfg = load_config(run / "config.yaml", overrides)
    except FedharError as e:
        raise SystemExit(f"{run}/config.yaml: {e}") from None
    absent = [role for role in roles if not getattr(cfg.data.split, role)]
    if absent:
        raise SystemExit(f"{run}/config.yaml names no {' / '.join(absent)} subjects (data.split.{absent[0]}): this "
                         "recipe scores runs trained on a named subject split")  # fmt: skip
    if cfg.data.path is None:
        raise SystemExit(f"{run} was trained on `data.dataset: {cfg.data.dataset}` with no data.path: this recipe "
                         "re-reads recordings from disk")  # fmt: skip
    if not Path(cfg.data.path).exists():
        raise SystemExit(f"{run}: its data.path {cfg.data.path} does not exist from {Path.cwd()}; run from the "
                         "folder it was trained from, or pass --set data.path=/where/the/data/are")  # fmt: skip
    return cfg


# ---- process trees: wall time and peak memory of a command and everything it starts ----------------------


def tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and every process below it (Ray's GCS, raylet, workers…), or nothing once it is gone."""
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


def measure_tree(cmd: list[str], interval: float = 0.5, cwd: Path | None = None) -> dict:
    """Run ``cmd`` in a fresh process, sampling its whole process tree every ``interval`` s: wall seconds, the
    peak of the summed RSS (shared pages counted once per process: an upper bound) and of the summed PSS
    (shared pages split: the honest total), the driver's own peak RSS, the peak number of processes, and the
    processes of the tree that outlived the command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd or REPO)
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
        time.sleep(interval)
    wall = time.perf_counter() - t0
    time.sleep(2.0)
    left = [q.pid for q in seen.values() if q.pid != proc.pid and q.is_running() and q.status() != psutil.STATUS_ZOMBIE]
    return {
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
    }
