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

PACKAGES = ("fedhar", "torch", "transformers", "peft", "flwr", "ray", "numpy", "safetensors")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision(cwd: Path | None = None) -> dict[str, str | bool | list | None]:
    """Commit of the code that ran, and whether the work tree differed from it: changed files, and new
    files git does not ignore (a new module the run imported counts)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if rev.returncode != 0:
        return {"commit": None, "dirty": None}
    changed = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    return {"commit": rev.stdout.strip(), "dirty": bool(changed), **({"changed_files": changed[:50]} if changed else {})}


def uncommitted_diff(cwd: Path | None = None) -> str:
    """``git diff HEAD``: what a dirty work tree changed in tracked files ("" when clean or not a checkout)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return diff.stdout if diff.returncode == 0 else ""


class RunDir:
    """``<output_dir>/<name>/``: config.yaml, run.json, then whatever the job writes."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, cfg: ExperimentConfig, kind: str) -> "RunDir":
        """A fresh folder for ``cfg.name`` (``name-2``, ``name-3``… when taken) holding config.yaml and run.json
        (and ``uncommitted.diff`` when the code that runs differs from its commit)."""
        base = Path(cfg.output_dir) / cfg.name
        path, i = base, 1
        while not cls._claim(path):  # never overwrite an earlier run's results
            i += 1
            path = base.with_name(f"{cfg.name}-{i}")
        run = cls(path)
        save_config(cfg, path / "config.yaml")
        git = git_revision()
        run.write_json("run.json", {
            "kind": kind,
            "name": cfg.name,
            "seed": cfg.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": _command(),
            "cwd": os.getcwd(),  # relative paths in config.yaml (data.path) start here
            "versions": versions(),
            "git": git,
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        })  # fmt: skip
        if git.get("dirty"):
            run.file("uncommitted.diff").write_text(uncommitted_diff())
        return run

    def record_resume(self, cfg: ExperimentConfig, overrides: list[str]) -> None:
        """Save the config a resumed run goes on with, keeping what it started with: a config that differs
        moves the earlier one to ``config.before-resume-K.yaml``, and every resume is appended to run.json
        (when, the overrides, the command and the code's revision)."""
        info = json.loads(self.file("run.json").read_text()) if self.file("run.json").is_file() else {}
        resumes = info.get("resumes", [])
        current = self.file("config.yaml")
        earlier = current.read_text() if current.is_file() else None
        save_config(cfg, current.with_name("config.yaml.tmp"))
        if earlier is not None and current.with_name("config.yaml.tmp").read_text() != earlier:
            current.with_name(f"config.before-resume-{len(resumes) + 1}.yaml").write_text(earlier)
        current.with_name("config.yaml.tmp").replace(current)
        resumes.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": list(overrides),
                        "command": _command(), "cwd": os.getcwd(), "git": git_revision()})  # fmt: skip
        self.update_json("run.json", resumes=resumes)

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
        """Remove the folder of a run that failed before writing anything but what :meth:`create` writes,
        so a failed attempt does not shift the next run's name (``name-2`` …)."""
        if {p.name for p in self.path.iterdir()} <= {"config.yaml", "run.json", "uncommitted.diff"}:
            shutil.rmtree(self.path, ignore_errors=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: dict | list) -> Path:
        return write_json_atomic(self.path / name, data)

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


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Temp file beside ``path``, then rename: a crash or kill never leaves half a file, and an earlier one
    stays whole until the new one is complete."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, newline="")
    tmp.replace(target)
    return target


def write_json_atomic(path: str | Path, data: dict | list) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_jsonable))


def _command() -> str:
    """The command line as a user types it: ``fedhar train ...``, not the module file Python ran."""
    program = Path(sys.argv[0]).name
    if program in ("main.py", "__main__.py") and "fedhar" in Path(sys.argv[0]).parts:
        program = "fedhar"
    return " ".join([program, *sys.argv[1:]])


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
