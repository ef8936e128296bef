"""What the recipes share that re-score trained runs or write figures: run folders as input, overrides
of their saved configs, provenance next to every result."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from fedhar.config import ExperimentConfig, load_config
from fedhar.errors import FedharError


def add_run_arguments(p: argparse.ArgumentParser, runs_help: str) -> None:
    """``runs`` (run folders of `fedhar train`) and ``--set KEY=VALUE`` (repeatable) overriding every run's config.

    Overrides are an option, not a positional list after ``runs``: argparse would hand them to ``runs``."""
    p.add_argument("runs", nargs="+", type=Path, help=runs_help)
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


def provenance(**extra) -> dict:
    """Command, working folder, package versions and git revision: recorded beside every recipe result."""
    from fedhar.results.run import git_revision, versions

    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "cwd": os.getcwd(),
            "versions": versions(), "git": git_revision(), **extra}  # fmt: skip


def checkpoint_fingerprint(run: Path, *extra) -> str:
    """Changes when the run's checkpoint files, or anything in ``extra``, change: keys for per-run caches."""
    files = sorted((run / "checkpoint").iterdir())
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()]
    return hashlib.sha256(json.dumps([stamp, *extra], default=str).encode()).hexdigest()[:12]


#: settings that name or place a run, or split the CPU between parallel runs, without changing what it measures
NOT_SETTINGS = ("name", "output_dir", "train.num_threads")


def settings_differ(run_dir: Path, config: str | Path, overrides: list[str], kind: str = "train") -> list[str]:
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


def check_reusable(run_dir: Path, config: str | Path, overrides: list[str], kind: str = "train") -> None:
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
