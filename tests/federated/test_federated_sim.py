"""``fedhar simulate`` end to end on Flower's Ray engine: results, determinism, --resume, a Ray cluster, clean exit."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from fedhar.cli.main import main
from tests.federated.test_federated import TINY_FED

#: the embedded default's two devices and placements, cut to one each for speed
TINY_SIM = [*TINY_FED, "data.synthetic.devices=[phone-a]", "data.synthetic.placements=[waist]"]
RAY = str(Path(sys.executable).parent / "ray")
METRICS = ("val_accuracy", "val_macro_f1", "val_loss", "test_accuracy", "test_macro_f1", "test_loss",
           "lora_product_gap")  # fmt: skip


@pytest.fixture
def process_mark(monkeypatch):
    """Every process this test starts (Ray's included) inherits this variable, so leftovers can be found."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv("FEDHAR_TEST_MARK", mark)
    return mark


def leftovers(mark: str, wait_s: float = 15.0) -> list[str]:
    """Processes (other than this one) still carrying ``mark`` after up to ``wait_s`` seconds."""
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid != os.getpid() and p.environ().get("FEDHAR_TEST_MARK") == mark and p.status() != "zombie":
                    found.append(" ".join(p.info["cmdline"] or [])[:120])
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def rounds(run: Path) -> list[dict]:
    return json.loads((run / "rounds.json").read_text())["rounds"]


def test_simulate_end_to_end_deterministic_and_resumable(tmp_path, process_mark, capsys):
    out = tmp_path / "runs"
    assert main(["simulate", *TINY_SIM, f"output_dir={out}", "name=a"]) == 0
    run = out / "a"
    for f in ("config.yaml", "run.json", "federation.json", "rounds.json", "rounds.csv", "clients.csv",
              "metrics.json", "rounds.png", "bytes_vs_metric.png", "checkpoint/model.json",
              "checkpoint/trainable.safetensors"):  # fmt: skip
        assert (run / f).is_file(), f
    progress = capsys.readouterr().err
    assert "round   1/2" in progress and "round   2/2" in progress
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["rounds_completed"] == 2 and metrics["clients"] == 3
    assert 0 < metrics["communication"]["ratio_vs_full_model_fedavg"] < 1
    clients = (run / "clients.csv").read_text().splitlines()
    assert len(clients) == 1 + 2 * 3 and "bytes_down" in clients[0] and "bytes_up" in clients[0]

    # the global trainable state moved away from its seeded init, and `fedhar evaluate` scores the checkpoint
    from fedhar.config import load_config
    from fedhar.federated.data import subject_split
    from fedhar.model.har_model import build_model
    from fedhar.model.state import get_trainable_state, load_checkpoint, read_checkpoint

    cfg = load_config(run / "config.yaml")
    _, _, test = subject_split(cfg)
    init = get_trainable_state(build_model(cfg.model, load_checkpoint(run / "checkpoint").data, cfg.seed))
    _, final = read_checkpoint(run / "checkpoint")
    assert any(not np.array_equal(final[n], init[n]) for n in init)
    test.save(tmp_path / "test.npz")
    assert main(["evaluate", str(run / "checkpoint"), "--data", str(tmp_path / "test.npz"), "--json",
                 str(tmp_path / "eval.json")]) == 0  # fmt: skip
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["final"]["test_accuracy"])

    # same config and seed, other worker count, stopped after round 1 and resumed: identical rounds
    assert main(["simulate", *TINY_SIM, f"output_dir={out}", "name=b", "federated.rounds=1",
                 "federated.max_concurrent_clients=1", "--quiet"]) == 0  # fmt: skip
    assert [r["round"] for r in rounds(out / "b")] == [1]
    assert main(["simulate", "--resume", str(out / "b"), "federated.rounds=2", "--quiet"]) == 0
    assert load_config(out / "b" / "config.before-resume-1.yaml").federated.rounds == 1  # what it started with
    assert json.loads((out / "b" / "run.json").read_text())["resumes"][0]["overrides"] == ["federated.rounds=2"]
    for key in METRICS:
        assert [r[key] for r in rounds(out / "b")] == [r[key] for r in rounds(run)], key
    assert leftovers(process_mark) == []


def test_simulate_errors_are_one_line(tmp_path, capsys):
    assert main(["simulate", *TINY_SIM, f"output_dir={tmp_path}", "federated.min_clients=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than federated.min_clients=4" in err[0]
    assert main(["simulate", "--resume", str(tmp_path / "nothing-here")]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@pytest.mark.skipif(shutil.which(RAY) is None, reason="the `ray` command is not installed next to this Python")
def test_attaches_to_a_local_ray_cluster(tmp_path, process_mark):
    """A head and a worker node as separate `ray start` processes on loopback; the simulation attaches by address."""
    port = _free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", "--block"]
    head_cmd = [RAY, "start", "--head", f"--port={port}", f"--ray-client-server-port={_free_port()}",
                "--include-dashboard=false", *common]  # fmt: skip
    logs = [open(tmp_path / name, "w") for name in ("head.log", "worker.log")]
    nodes = [subprocess.Popen(head_cmd, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        _wait_port(port)
        nodes.append(subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{port}", *common], stdout=logs[1],
                                      stderr=subprocess.STDOUT))  # fmt: skip
        import ray

        deadline = time.monotonic() + 60
        ray.init(address=f"127.0.0.1:{port}", logging_level="ERROR", log_to_driver=False)
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ray.cluster_resources().get("CPU") == 2.0, "the worker node did not join"
        ray.shutdown()

        out = tmp_path / "runs"
        assert main(["simulate", *TINY_SIM, f"output_dir={out}", "name=cluster", "federated.rounds=1",
                     f"federated.ray_address=127.0.0.1:{port}", "--quiet"]) == 0  # fmt: skip
        metrics = json.loads((out / "cluster" / "metrics.json").read_text())
        assert metrics["ray_address"] == f"127.0.0.1:{port}" and metrics["rounds_completed"] == 1
        assert rounds(out / "cluster")[0]["clients_updated"] == 3
    finally:
        for node in reversed(nodes):  # like `ray stop`, but only for the two nodes this test started
            node.terminate()
            node.wait(timeout=60)
        for f in logs:
            f.close()
        current = Path("/tmp/ray/ray_current_cluster")  # `ray start` leaves its address here for ray.init()
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    assert leftovers(process_mark) == []
