"""Run folders: every result lands next to its resolved config, seed, versions and git revision."""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from fedhar.config import ExperimentConfig, save_config
from fedhar.errors import ConfigError

PACKAGES = ("fedhar", "torch", "transformers", "peft", "flwr", "ray", "numpy", "safetensors")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision(cwd: Path | None = None) -> dict[str, str | bool | None]:
    """Commit of the code that ran, and whether the work tree had uncommitted changes."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if rev.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


class RunDir:
    """``<output_dir>/<name>/``: config.yaml, run.json, then whatever the job writes."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, cfg: ExperimentConfig, kind: str, resume: bool = False) -> "RunDir":
        """A fresh folder for ``cfg.name`` (``name-2``, ``name-3``… when taken), or the existing one to resume."""
        base = Path(cfg.output_dir) / cfg.name
        if resume:
            if not (base / "config.yaml").is_file():
                raise ConfigError(f"cannot resume: {base} holds no earlier run of `{cfg.name}`")
            return cls(base)
        path, i = base, 1
        while not cls._claim(path):  # never overwrite an earlier run's results
            i += 1
            path = base.with_name(f"{cfg.name}-{i}")
        run = cls(path)
        save_config(cfg, path / "config.yaml")
        run.write_json("run.json", {
            "kind": kind,
            "name": cfg.name,
            "seed": cfg.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "versions": versions(),
            "git": git_revision(),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        })  # fmt: skip
        return run

    @staticmethod
    def _claim(path: Path) -> bool:
        """Take ``path`` if it is new or empty; creating config.yaml exclusively settles two jobs racing for it."""
        if path.exists() and any(path.iterdir()):
            return False
        path.mkdir(parents=True, exist_ok=True)
        try:
            (path / "config.yaml").open("x").close()
        except FileExistsError:
            return False
        return True

    def discard_if_unused(self) -> None:
        """Remove the folder of a run that failed before writing anything but its config and run.json,
        so a failed attempt does not shift the next run's name (``name-2`` …)."""
        if {p.name for p in self.path.iterdir()} <= {"config.yaml", "run.json"}:
            shutil.rmtree(self.path, ignore_errors=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: dict | list) -> Path:
        """Atomic JSON write (temp file then rename) so a crash never leaves half a file."""
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
        tmp.replace(target)
        return target

    def update_json(self, name: str, **fields) -> None:
        path = self.path / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update(fields)
        self.write_json(name, data)

    def write_csv(self, name: str, rows: list[dict]) -> Path:
        target = self.path / name
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(target)
        return target


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
