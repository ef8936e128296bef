"""``fedhar server`` / ``fedhar client`` as real processes on loopback: TLS, device keys, faults, resume.

Every process a test starts carries FEDHAR_TEST_MARK and is stopped by its pid at the end; the test then
checks that none (SuperLink, SuperNodes included) is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.test_deploy import CLASSES, TINY_SPEC, write_device_csv
from tests.federated.test_federated_sim import leftovers, process_mark  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

FEDHAR = [sys.executable, "-m", "fedhar.cli.main"]

#: a device whose update is poisoned in round 1 and whose training hangs from round 2 on (to be killed mid-round)
HOSTILE_CLIENT = """
import sys, time
import numpy as np
from fedhar.federated import client
real = client.train_client
def hostile(job, data, state):
    new, metrics = real(job, data, state)
    if job.round == 1:
        name = sorted(new)[0]
        new[name] = np.full_like(new[name], np.nan)
        return new, metrics
    time.sleep(300)
client.train_client = hostile
from fedhar.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def server_config(tmp_path: Path, rounds: int, min_clients: int, data: Path | None = None) -> Path:
    """The tiny federation of tests.federated.test_federated (synthetic subjects 4/5 held out on the server); with ``data``,
    the server reads its held-out subjects from that folder of recordings instead."""
    path = tmp_path / "server.yaml"
    source = (f"dataset: auto\n  path: {data}\n  sample_rate: 50" if data else
              f"dataset: synthetic\n  synthetic: {json.dumps(TINY_SPEC)}")  # fmt: skip
    path.write_text(f"""name: deployed
output_dir: {tmp_path / "runs"}
data:
  {source}
  classes: {json.dumps(CLASSES)}
  window: 64
  split: {{val: [4], test: [5]}}
model: {{backbone: tiny-llama, num_layers: 2, tokens: 8, conv_channels: 16}}
train: {{batch_size: 16, device: cpu, lr: 0.003}}
federated: {{rounds: {rounds}, min_clients: {min_clients}}}
""")
    return path


class Deployment:
    """Processes of one test, all stopped by pid at the end."""

    def __init__(self, tmp_path: Path):
        from fedhar.deploy.runtime import free_port

        self.root, self.port = tmp_path, free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, FEDHAR_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
        self.procs: list[subprocess.Popen] = []
        self.certs = tmp_path / "certs"
        subprocess.run([*FEDHAR, "certs", "--out", str(self.certs), "--clients", "c1", "c2", "rogue"], env=self.env,
                       check=True, capture_output=True)  # fmt: skip

    def start(self, args: list[str], log: str, program: list[str] = FEDHAR) -> subprocess.Popen:
        out = open(self.root / log, "ab")  # noqa: SIM115 - the process writes it until it ends
        proc = subprocess.Popen([*program, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def server(self, *args: str, log: str = "server.log") -> subprocess.Popen:
        keys = [str(self.certs / "clients" / f"{c}.pub") for c in ("c1", "c2")]  # the rogue key is not registered
        return self.start(["server", "--address", self.address, "--certs", str(self.certs), "--client-keys", *keys,
                           *args], log)  # fmt: skip

    def client(self, i: int | str, data: Path, program: list[str] = FEDHAR, *extra: str,
               ca: Path | None = None) -> subprocess.Popen:  # fmt: skip
        """``fedhar client`` with key c<i> (or the key named ``i``), logging to client<i>.log."""
        key = f"c{i}" if isinstance(i, int) else i
        return self.start(["client", "--server", self.address, "--data", str(data),
                           "--ca", str(ca or self.certs / "ca.crt"), "--key", str(self.certs / "clients" / f"{key}.key"),
                           "--work-dir", str(self.root / f"c{i}"), *extra], f"client{i}.log", program)  # fmt: skip

    def text(self, log: str) -> str:
        return (self.root / log).read_text(errors="replace") if (self.root / log).is_file() else ""

    def wait_for(self, log: str, needle: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text(log):
            assert time.monotonic() < deadline, f"`{needle}` not in {log}:\n{self.text(log)[-3000:]}"
            time.sleep(0.1)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def deployment(tmp_path, process_mark):  # noqa: F811 - process_mark is the imported fixture
    dep = Deployment(tmp_path)
    yield dep
    dep.stop_all()
    assert leftovers(process_mark) == []


def test_two_devices_train_only_registered_ones_join_and_a_restarted_server_resumes(deployment, tmp_path):
    from fedhar.deploy.runtime import free_port

    devices = [write_device_csv(tmp_path / f"phone{i}" / "recording.csv", [str(i)]) for i in (1, 2)]
    server = deployment.server("--config", str(server_config(tmp_path, rounds=1, min_clients=2)))
    # device 2 claims device 1's name: it is named by the key it authenticated with (a clash once stopped the run)
    clients = [deployment.client(1, devices[0]), deployment.client(2, devices[1], FEDHAR, "--name", "c1")]
    deployment.wait_for("server.log", "waiting for 2 clients")
    # a device with an unregistered key is refused by the SuperLink (Flower's own SuperNode, nothing of fedhar)
    rogue = deployment.start(["--superlink", deployment.address,
                              "--root-certificates", str(deployment.certs / "ca.crt"),
                              "--auth-supernode-private-key", str(deployment.certs / "clients" / "rogue.key"),
                              "--isolation", "process", "--port", str(free_port())], "rogue.log",
                             [str(Path(sys.executable).parent / "flower-supernode")])  # fmt: skip
    assert server.wait(180) == 0, deployment.text("server.log")
    assert rogue.wait(60) != 0 and "Failed to activate SuperNode" in deployment.text("rogue.log")

    # the server restarts and resumes; the devices stay up, reconnect to the new SuperLink and carry on
    resumed = deployment.server("--resume", str(tmp_path / "runs" / "deployed"), "federated.rounds=2",
                                log="server2.log")
    assert resumed.wait(180) == 0, deployment.text("server2.log")
    assert all(c.poll() is None for c in clients)
    assert "SuperNode exited" in deployment.text("client1.log")  # the new SuperLink did not know it: restarted

    run = tmp_path / "runs" / "deployed"
    data = json.loads((run / "rounds.json").read_text())
    assert [(r["round"], r["clients_updated"], r["clients_failed"]) for r in data["rounds"]] == [(1, 2, 0), (2, 2, 0)]
    assert all(np.isfinite(r["test_macro_f1"]) and r["bytes_total"] > 0 for r in data["rounds"])
    assert sorted(c["client"] for c in data["clients"] if c["round"] == 2) == ["c1", "c2"]  # named by their keys
    federation = json.loads((run / "federation.json").read_text())["clients"]
    assert [(c["name"], c.get("claimed_name")) for c in federation] == [("c1", None), ("c2", "c1")]
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["flower"]["tls"] and run_info["flower"]["supernode_auth"]

    # the global trainable state moved away from its seeded init
    from fedhar.config import load_config
    from fedhar.federated.data import subject_split
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import get_trainable_state, read_checkpoint

    cfg = load_config(run / "config.yaml")
    _, val, _ = subject_split(cfg)
    from fedhar.data.preprocess import Normalizer

    spec = DataSpec(val.layout, val.window_len, val.sample_rate, list(val.label_names), Normalizer.identity(6))
    init = get_trainable_state(build_model(cfg.model, spec, cfg.seed))
    _, final = read_checkpoint(run / "checkpoint")
    assert sorted(final) == sorted(init) and any(not np.allclose(final[n], init[n]) for n in init)
    # each device served every message in one process (the model was built once per device)
    for i in (1, 2):
        tasks = [json.loads(line) for line in (tmp_path / f"c{i}" / "tasks.jsonl").read_text().splitlines()]
        assert [t["message_type"] for t in tasks] == ["query.describe", "train", "query.describe", "train"]
        assert all(t["ok"] for t in tasks)


def test_a_poisoned_update_is_rejected_and_a_device_killed_mid_round_does_not_stall_the_run(deployment, tmp_path):
    """The killed device is the whole device (its fedhar client and its SuperNode, SIGKILL: power or network
    gone): the SuperLink counts it offline 2 heartbeat intervals after its last heartbeat. Measured here:
    43 s with Flower's 30 s interval, ~18 s with fedhar's 10 s (``fedhar client --heartbeat``)."""
    import psutil

    devices = [write_device_csv(tmp_path / f"phone{i}" / "recording.csv", [str(i)]) for i in (1, 2)]
    server = deployment.server("--config", str(server_config(tmp_path, rounds=2, min_clients=1)), "--clients", "2")
    deployment.client(1, devices[0])
    hostile = deployment.client(2, devices[1], program=[sys.executable, "-c", HOSTILE_CLIENT])
    deployment.wait_for("server.log", "round   1/2")
    # the hostile device takes round 2's message and "trains" forever: kill it mid-round, as a crash would
    deployment.wait_for("client2.log", "round 1: train answered")
    deadline = time.monotonic() + 60
    while (deployment.root / "c2" / "supernode.log").read_text().count("Receiving: train") < 2:
        assert time.monotonic() < deadline, "the hostile device never received round 2"
        time.sleep(0.1)
    supernode = psutil.Process(hostile.pid).children(recursive=True)
    killed = time.monotonic()
    for p in [*supernode, psutil.Process(hostile.pid)]:
        p.send_signal(signal.SIGKILL)
    while "Node Unavailable" not in deployment.text("server.log"):
        assert server.poll() is None, deployment.text("server.log")
        time.sleep(0.2)
    lost_s = time.monotonic() - killed
    print(f"a device killed mid-round: the server went on without it after {lost_s:.1f} s")
    assert lost_s < 35, lost_s  # 2 x the 10 s heartbeat, plus polling (Flower's 30 s interval: up to 60 s)
    assert server.wait(180) == 0, deployment.text("server.log")

    rows = json.loads((tmp_path / "runs" / "deployed" / "rounds.json").read_text())["rounds"]
    assert [(r["clients_updated"], r["clients_rejected"], r["clients_failed"]) for r in rows] == [(1, 1, 0), (1, 0, 1)]
    assert "update rejected" in rows[0]["rejected"][0] and "NaN" in rows[0]["rejected"][0]
    assert "Node Unavailable" in rows[1]["errors"][0]
    log = deployment.text("server.log")
    assert "round 1: " in log and "update rejected" in log  # the server says what happened, per client
    assert "round 2: " in log and "Node Unavailable" in log and "1 failed" in log


def test_a_device_started_before_the_server_joins_refused_devices_say_why_and_the_server_has_only_held_out_data(
        deployment, tmp_path):  # fmt: skip
    """The device waits for a server that is not there yet (saying so) and joins when it comes; devices with an
    unregistered key or another deployment's CA are told why on their console; the server's data folder holds
    only the held-out subjects 4 and 5 (the devices hold 1 and 2)."""
    devices = [write_device_csv(tmp_path / f"phone{i}" / "recording.csv", [str(i)]) for i in (1, 2)]
    held_out = write_device_csv(tmp_path / "server-data" / "held-out.csv", ["4", "5"]).parent
    early = deployment.client(1, devices[0])
    deployment.wait_for("client1.log", "not connected after 15 s: nothing listens at")
    subprocess.run([*FEDHAR, "certs", "--out", str(tmp_path / "other")], env=deployment.env, check=True,
                   capture_output=True)  # fmt: skip
    server = deployment.server("--config", str(server_config(tmp_path, rounds=1, min_clients=2, data=held_out)),
                               "--clients", "2")  # fmt: skip
    deployment.wait_for("server.log", "waiting for 2 clients")
    refused = [deployment.client("rogue", devices[1]),  # a key the server did not register
               deployment.client("c2", devices[1], FEDHAR, ca=tmp_path / "other" / "ca.crt")]  # another CA
    deployment.wait_for("clientrogue.log", "refused this device's key: it is not registered")
    deployment.wait_for("clientc2.log", "the server's certificate is not signed by --ca")
    for p in refused:
        p.terminate()
        p.wait(30)
    deployment.wait_for("client1.log", "joined the federation as node")
    deployment.client(2, devices[1])
    assert server.wait(180) == 0, deployment.text("server.log")
    assert early.poll() is None
    rows = json.loads((tmp_path / "runs" / "deployed" / "rounds.json").read_text())["rounds"]
    assert [(r["clients_updated"], r["clients_failed"]) for r in rows] == [(2, 0)]
    assert np.isfinite(rows[0]["test_macro_f1"]) and np.isfinite(rows[0]["val_macro_f1"])


def test_deployed_devices_send_what_the_post_hoc_adapter_is_fitted_from(deployment, tmp_path):
    """train.posthoc over real processes: each device answers the setup query with its adapter statistics (sums,
    no windows), the server fits the adapter from them, scores the held-out subjects with it every round and
    stores it with the checkpoint, where `fedhar evaluate --calibrate` finds it."""
    devices = [write_device_csv(tmp_path / f"phone{i}" / "recording.csv", [str(i)]) for i in (1, 2)]
    server = deployment.server("--config", str(server_config(tmp_path, rounds=1, min_clients=2)),
                               "train.posthoc={name: pair-calibration, classes: [SITTING, STANDING]}")  # fmt: skip
    for i in (1, 2):
        deployment.client(i, devices[i - 1])
    assert server.wait(180) == 0, deployment.text("server.log")
    run = tmp_path / "runs" / "deployed"
    (row,) = json.loads((run / "rounds.json").read_text())["rounds"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert row["clients_updated"] == 2  # one round: the round's model is the final one
    assert row["test_calibrated_macro_f1"] == pytest.approx(metrics["client_calibrated"]["test"]["macro_f1"])
    assert set(metrics["client_calibrated"]["test"]["per_subject"]) == {"5"}
    stored = json.loads((run / "checkpoint" / "model.json").read_text())["posthoc"]
    assert stored == metrics["posthoc"] and stored["name"] == "pair-calibration"
    assert len(stored["state"]["direction"]) == 9 and stored["state"]["typical_gap"] > 0
