"""Run folders keep what produced a result: command, working folder, the code's revision and its local
changes, and every resume of the run without losing the config it started with."""

import json
import subprocess
import sys

import pytest

from fedhar.config import load_config, shipped_config
from fedhar.results import run as run_module
from fedhar.results.run import RunDir, git_revision


def _repo(path):
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "a.py").write_text("x = 1\n")
    (path / ".gitignore").write_text("runs/\n")
    for cmd in (["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(["git", "-C", str(path), *cmd], check=True)
    return path


def test_git_revision_sees_changed_and_new_files_not_ignored_ones(tmp_path):
    repo = _repo(tmp_path / "repo")
    assert git_revision(repo)["dirty"] is False
    (repo / "runs").mkdir()
    (repo / "runs" / "r.json").write_text("{}")  # ignored: results are not code
    assert git_revision(repo)["dirty"] is False
    (repo / "new_module.py").write_text("y = 2\n")  # untracked code a run may import
    info = git_revision(repo)
    assert info["dirty"] is True and info["changed_files"] == ["new_module.py"]


def test_dirty_run_keeps_its_diff_and_records_cwd_and_command(tmp_path, monkeypatch):
    repo = _repo(tmp_path / "repo")
    (repo / "a.py").write_text("x = 2\n")
    real_diff = run_module.uncommitted_diff
    monkeypatch.setattr(run_module, "git_revision", lambda cwd=None: git_revision(repo))  # as if fedhar lived there
    monkeypatch.setattr(run_module, "uncommitted_diff", lambda cwd=None: real_diff(repo))
    monkeypatch.setattr(sys, "argv", ["/site-packages/fedhar/cli/main.py", "train", "--config", "x.yaml"])
    monkeypatch.chdir(tmp_path)
    cfg = load_config(shipped_config("default.yaml"), [f"output_dir={tmp_path / 'runs'}", "name=r"])
    run = RunDir.create(cfg, kind="train")
    info = json.loads(run.file("run.json").read_text())
    assert info["command"] == "fedhar train --config x.yaml" and info["cwd"] == str(tmp_path)
    assert info["git"]["dirty"] is True and info["git"]["changed_files"] == ["a.py"]
    assert "+x = 2" in run.file("uncommitted.diff").read_text()
    run.discard_if_unused()  # failed before any result: gone, diff and all, so the next run gets the name
    assert not run.path.exists()


def test_resume_keeps_the_config_it_started_with(tmp_path):
    cfg = load_config(shipped_config("default.yaml"), [f"output_dir={tmp_path}", "name=r", "federated.rounds=1"])
    run = RunDir.create(cfg, kind="simulate")
    started = run.file("config.yaml").read_text()
    run.record_resume(cfg, [])  # same config: nothing to keep aside
    assert not list(run.path.glob("config.before-resume-*"))
    run.record_resume(load_config(run.file("config.yaml"), ["federated.rounds=3"]), ["federated.rounds=3"])
    assert run.file("config.before-resume-2.yaml").read_text() == started
    assert load_config(run.file("config.yaml")).federated.rounds == 3
    resumes = json.loads(run.file("run.json").read_text())["resumes"]
    assert [r["overrides"] for r in resumes] == [[], ["federated.rounds=3"]]
    assert all("git" in r and r["command"] for r in resumes)


@pytest.mark.parametrize("argv0, expected", [("/x/fedhar/cli/main.py", "fedhar"), ("/usr/bin/fedhar", "fedhar"),
                                             ("simulations/models.py", "models.py")])  # fmt: skip
def test_command_reads_as_typed(monkeypatch, argv0, expected):
    monkeypatch.setattr(sys, "argv", [argv0, "train"])
    assert run_module._command() == f"{expected} train"
