"""Deployment pieces without processes: certificates, a device's own recordings, update checks, late clients."""

from __future__ import annotations

import json
import stat
import types
from pathlib import Path

import numpy as np
import pytest

from fedhar.errors import ConfigError, DataError
from tests.federated.test_federated import DirectGrid, _server_task_identity, tiny_cfg  # noqa: F401 - an autouse fixture

#: the synthetic recordings of tests.federated.test_federated.TINY_FED (subjects 1-3 train, 4 validates, 5 tests)
TINY_SPEC = {"subjects": 5, "seconds_per_activity": 4, "devices": ["phone-a"], "placements": ["waist"]}
CLASSES = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]


def write_device_csv(path: Path, subjects: list[str]) -> Path:
    """What a device records: raw samples (acc in g, gyro in rad/s) with a text label per sample, one CSV file.

    The samples are the synthetic recordings the server's config generates, so the windows are known."""
    from fedhar.data.synthetic import SyntheticSpec, generate

    rs = generate(SyntheticSpec.from_dict(TINY_SPEC), seed=0)
    lines, t = ["timestamp,subject,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"], 0.0
    for r in rs.recordings:
        if r.subject in subjects:
            for row, label in zip(r.signal, r.labels):
                name = rs.label_names[label] if label >= 0 else ""
                lines.append(f"{t:.3f},{r.subject}," + ",".join(f"{v:.6f}" for v in row) + f",{name}")
                t += 1 / r.sample_rate
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def device_cfg(*overrides: str):
    return tiny_cfg(f"data.classes={json.dumps(CLASSES)}", *overrides)


# ---- certificates --------------------------------------------------------------------------------


def test_test_deployment_files_verify_and_are_kept(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from fedhar.deploy.certs import create_test_deployment, server_certificate_hosts

    files = create_test_deployment(tmp_path, ["127.0.0.1", "localhost", "edge.lan"], ["phone-1"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert set(server_certificate_hosts(tmp_path / "server.crt")) == {"127.0.0.1", "localhost", "edge.lan"}
    for private in ("ca.key", "server.key", "clients/phone-1.key"):
        assert stat.S_IMODE((tmp_path / private).stat().st_mode) == 0o600, private
    key = load_ssh_private_key((tmp_path / "clients/phone-1.key").read_bytes(), None)
    pub = load_ssh_public_key((tmp_path / "clients/phone-1.pub").read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key() == pub
    assert len(files["clients"]) == 2
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    create_test_deployment(tmp_path, ["127.0.0.1"], ["phone-1", "phone-2"])  # adds phone-2, keeps the rest
    assert all(p.read_bytes() == data for p, data in before.items())
    assert (tmp_path / "clients/phone-2.pub").is_file()
    create_test_deployment(tmp_path, ["10.0.0.7"], [])  # a new address: the server certificate is issued again
    assert set(server_certificate_hosts(tmp_path / "server.crt")) == {"127.0.0.1", "localhost", "edge.lan", "10.0.0.7"}
    assert (tmp_path / "ca.crt").read_bytes() == before[tmp_path / "ca.crt"]
    with pytest.raises(ConfigError, match="client name"):
        create_test_deployment(tmp_path, None, ["../evil"])


def test_tls_is_required_unless_insecure_is_asked_for(tmp_path):
    from fedhar.deploy.client import client_tls
    from fedhar.deploy.server import ServerOptions, server_tls

    with pytest.raises(ConfigError, match="fedhar certs.*--insecure"):
        server_tls(ServerOptions())
    with pytest.raises(ConfigError, match="server certificate .* does not exist"):
        (tmp_path / "ca.crt").write_text("x")
        server_tls(ServerOptions(certs=tmp_path))
    with pytest.raises(ConfigError, match="CA certificate is not set"):
        client_tls(False, None, None)
    with pytest.raises(ConfigError, match="private key .* --key"):
        client_tls(False, tmp_path / "ca.crt", None)
    with pytest.raises(ConfigError, match="needs TLS"):
        client_tls(True, None, tmp_path / "k.key")
    assert server_tls(ServerOptions(insecure=True)).insecure and client_tls(True, None, None).insecure


def test_node_config_names_the_recordings_and_rejects_clashes(tmp_path):
    from fedhar.deploy.client import node_config
    from fedhar.deploy.runtime import node_config_arg

    config = node_config(tmp_path / "rec.csv", "auto", "1,3", "phone-1", 'site="ward 3" level=2', 2)
    assert config == {"site": "ward 3", "level": 2, "data-path": str((tmp_path / "rec.csv").resolve()),
                      "dataset": "auto", "subjects": "1,3", "name": "phone-1", "threads": 2}  # fmt: skip
    from flwr.common.config import parse_config_args

    assert parse_config_args([node_config_arg(config)]) == config  # what the SuperNode reads back
    with pytest.raises(ConfigError, match="--subjects"):
        node_config(tmp_path, "auto", None, None, "subjects=2", None)


def test_app_fab_names_this_fedhar():
    import zipfile
    from io import BytesIO

    from fedhar import __version__
    from fedhar.deploy.runtime import app_fab

    fab = app_fab({"run-dir": "/runs/x"})
    names = zipfile.ZipFile(BytesIO(fab.content)).namelist()
    assert {"pyproject.toml", "clients/app.py", "server/app.py"} <= set(names)
    pyproject = zipfile.ZipFile(BytesIO(fab.content)).read("pyproject.toml").decode()
    assert f'version = "{__version__}"' in pyproject and 'run-dir = "/runs/x"' in pyproject


# ---- a device's own recordings (fedhar.federated.data) --------------------------------------------


def test_device_reads_its_own_csv_like_the_simulation_reads_the_subject(tmp_path):
    from fedhar.federated.data import client_data

    cfg = device_cfg()
    csv = write_device_csv(tmp_path / "phone" / "recording.csv", ["1", "2"])
    simulated = client_data(cfg, {"partition-id": 0}, stage=0)  # subject 1
    one = client_data(cfg, {"data-path": str(csv), "subjects": "1", "name": "phone-1"}, stage=0)
    assert one.name == "phone-1" and one.train.label_names == CLASSES
    assert len(one.train) == len(simulated.train)
    np.testing.assert_allclose(one.train.x, simulated.train.x, atol=1e-4)  # same windows, from the CSV
    assert (one.train.y == simulated.train.y).all()
    both = client_data(cfg, {"data-path": str(csv.parent)}, stage=0)  # the folder: both subjects
    assert len(both.train) == 2 * len(one.train) and both.name.endswith("-phone")
    with pytest.raises(DataError, match=r"subjects \['9'\] are not in these recordings"):
        client_data(cfg, {"data-path": str(csv), "subjects": "9"}, stage=0)
    with pytest.raises(DataError, match="does not exist"):
        client_data(cfg, {"data-path": str(tmp_path / "nothing.csv")}, stage=0)
    with pytest.raises(ConfigError, match="data.classes"):
        client_data(tiny_cfg(), {"data-path": str(csv)}, stage=0)


def test_device_labels_map_onto_the_servers_classes(tmp_path):
    from fedhar.federated.data import client_data

    csv = write_device_csv(tmp_path / "rec.csv", ["1"])
    reordered = ["LAYING", "WALKING", "RUNNING"]  # RUNNING: never recorded here; the others: dropped
    data = client_data(device_cfg(f"data.classes={json.dumps(reordered)}"), {"data-path": str(csv)}, stage=0)
    full = client_data(device_cfg(), {"data-path": str(csv)}, stage=0)
    assert data.train.label_names == reordered
    assert set(data.train.y.tolist()) == {0, 1}
    assert (data.train.y == 0).sum() == (full.train.y == CLASSES.index("LAYING")).sum()
    assert (data.train.y == 1).sum() == (full.train.y == CLASSES.index("WALKING")).sum()


# ---- the round loop: bad updates, clients that come and go ------------------------------------------


def test_bad_updates_are_rejected_with_a_reason_and_counted(tmp_path, monkeypatch):
    from fedhar.federated import client
    from tests.federated.test_federated import _run_direct

    real = client.train_client

    def hostile(job, data, state):
        new, metrics = real(job, data, state)
        name = sorted(new)[0]
        if data.name == "subject-2":
            new[name] = np.full_like(new[name], np.nan)
        if data.name == "subject-3":
            new[name] = np.zeros((3, 3), np.float32)
        return new, metrics

    monkeypatch.setattr(client, "train_client", hostile)
    summary, run = _run_direct(tmp_path, "hostile", "federated.min_clients=1")
    rows = json.loads(run.file("rounds.json").read_text())["rounds"]
    assert [(r["clients_updated"], r["clients_rejected"], r["clients_failed"]) for r in rows] == [(1, 2, 0)] * 2
    reasons = rows[0]["rejected"]
    assert reasons[0].startswith("subject-2: update rejected") and "NaN" in reasons[0]
    assert reasons[1].startswith("subject-3: update rejected") and "shape (3, 3)" in reasons[1]
    assert np.isfinite(summary["final"]["test_loss"])  # the global model never saw the bad tensors


class ChangingGrid(DirectGrid):
    """Nodes connected per round: the loop asks before each round (describe first, then rounds 1, 2...)."""

    def __init__(self, num_nodes: int, connected: list[list[int]]):
        super().__init__(num_nodes)
        self.connected, self.calls = connected, 0

    def get_node_ids(self):
        nodes = self.connected[min(self.calls, len(self.connected) - 1)]
        self.calls += 1
        return [100 + i for i in nodes]


def test_clients_join_late_leave_and_come_back(tmp_path):
    from fedhar.federated.server import ServerJob, run_federation
    from fedhar.results.run import RunDir

    cfg = tiny_cfg(f"output_dir={tmp_path}", "name=churn", "federated.rounds=3", "federated.min_clients=1")
    # setup sees nodes 0 and 1; round 1: 0, 1 (node 2 joins late); round 2: node 1 gone; round 3: all back
    grid = ChangingGrid(3, [[0, 1], [0, 1], [0, 1, 2], [0, 2], [0, 1, 2]])
    run_federation(grid, ServerJob(cfg, RunDir.create(cfg, kind="server"), progress=False))
    rows = json.loads((tmp_path / "churn" / "rounds.json").read_text())["rounds"]
    assert [r["clients_sampled"] for r in rows] == [3, 2, 3]
    clients = json.loads((tmp_path / "churn" / "rounds.json").read_text())["clients"]
    assert [c["client"] for c in clients if c["round"] == 2] == ["subject-1", "subject-3"]
    federation = json.loads((tmp_path / "churn" / "federation.json").read_text())
    assert [c["name"] for c in federation["clients"]] == ["subject-1", "subject-2", "subject-3"]


def test_server_checks_fail_before_a_run_folder_or_process_exists(tmp_path, capsys):
    from fedhar.cli.main import main

    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'runs'}\nmodel: {{backbone: tiny-llama, num_layers: 2}}\n")
    assert main(["server", "--config", str(config), "--insecure"]) == 2
    assert "set `data.classes`" in capsys.readouterr().err
    config.write_text(config.read_text() + f"data: {{classes: {json.dumps(CLASSES)}}}\n")
    assert main(["server", "--config", str(config)]) == 2  # TLS is the default: certificates needed
    err = capsys.readouterr().err
    assert "--certs DIR" in err and "--insecure" in err
    assert main(["server", "--config", str(config), "--insecure", "--address", "9092"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err

    from fedhar.deploy.certs import create_test_deployment

    create_test_deployment(tmp_path / "certs", ["127.0.0.1"], ["phone-1"])
    tls = ["--certs", str(tmp_path / "certs")]
    assert main(["server", "--config", str(config), *tls]) == 2  # nobody could join a SuperLink without keys
    assert "--client-keys" in capsys.readouterr().err
    keys = ["--client-keys", str(tmp_path / "certs" / "clients")]
    assert main(["server", "--config", str(config), *tls, *keys, "--address", "10.9.8.7:9092"]) == 2
    assert "is not valid for 10.9.8.7" in capsys.readouterr().err
    # an override written after --client-keys is an override, not a key file argparse swallowed
    assert main(["server", "--config", str(config), *tls, "--address", "10.9.8.7:9092", *keys,
                 "federated.rounds=0"]) == 2  # fmt: skip
    assert "federated.rounds must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ---- review fixes: CA files, addresses, a shared SuperLink, restarts, process start ---------------------


def test_a_ca_certificate_without_its_key_is_refused_and_a_foreign_server_certificate_reissued(tmp_path):
    from cryptography import x509

    from fedhar.deploy.certs import create_test_deployment, server_certificate_hosts

    create_test_deployment(tmp_path, ["127.0.0.1", "edge.lan"], ["phone-1"])
    (tmp_path / "ca.key").unlink()  # moved offline, say
    with pytest.raises(ConfigError, match=r"ca.crt exists but .*ca.key does not: restore ca.key, or remove ca.crt"):
        create_test_deployment(tmp_path, ["127.0.0.1"], ["phone-2"])
    (tmp_path / "ca.crt").unlink()
    create_test_deployment(tmp_path, ["127.0.0.1"], ["phone-2"])  # a new CA: the old server.crt no longer verifies
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes()).verify_directly_issued_by(ca)
    assert {"127.0.0.1", "edge.lan"} <= set(server_certificate_hosts(tmp_path / "server.crt"))


def test_ipv6_addresses_keep_their_brackets():
    from fedhar.deploy.runtime import join_address, split_address

    assert split_address("[::1]:9092") == ("::1", 9092) and join_address("::1", 9092) == "[::1]:9092"
    assert split_address("edge.lan:9092") == ("edge.lan", 9092) and join_address("edge.lan", 1) == "edge.lan:1"
    with pytest.raises(ConfigError, match=r"in brackets, e.g. \[::1\]:9092"):
        split_address("::1:9092")


def test_a_running_superlink_is_reached_by_its_ipv6_address_and_its_auth_is_not_guessed(tmp_path, monkeypatch):
    from fedhar.deploy import server
    from fedhar.deploy.server import ServerOptions, serve
    from fedhar.results.run import RunDir

    calls = {}
    monkeypatch.setattr(server, "control_client", lambda address, tls: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(server, "start_run", lambda control, config: (7, "f" * 64))
    monkeypatch.setattr(server, "stop_run", lambda control, run_id: calls.setdefault("stopped", run_id))

    def run_task(address, tls, secret, run_id, fab_hash, main):
        calls.update(address=address, run_id=run_id, fab_hash=fab_hash)
        return {"wall_seconds": 0.0}

    monkeypatch.setattr(server, "run_server_task", run_task)
    secret = tmp_path / "superexec.secret"
    secret.write_text("s")
    cfg = device_cfg(f"output_dir={tmp_path}", "name=shared", "data.sample_rate=50")
    run = RunDir.create(cfg, kind="server")
    serve(cfg, run, ServerOptions(superlink="[::1]:9092", superexec_secret=secret, insecure=True), progress=False)
    assert calls == {"address": "[::1]:9092", "run_id": 7, "fab_hash": "f" * 64, "stopped": 7}
    flower = json.loads(run.file("run.json").read_text())["flower"]
    assert flower["superlink"] == "[::1]:9092" and flower["supernode_auth"] is None


def test_the_server_claims_only_the_task_of_its_own_fab():
    """Flower's AcquireTask handler, on its in-memory state: another app's pending ServerApp task stays pending."""
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager
    from flwr.superlink.servicer.runtime.runtime_handlers import acquire_task as handle
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, TaskType
    from flwr.supercore.object_store import ObjectStoreFactory

    from fedhar.deploy.runtime import acquire_task

    state = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()
    other = state.create_run("someone/app", "1.0", "a" * 64, {}, "default", None, None, TaskType.SERVER_APP)
    ours = state.create_run("fedhar/fedhar", "0.1.0", "b" * 64, {}, "default", None, None, TaskType.SERVER_APP)
    runtime = types.SimpleNamespace(AcquireTask=lambda request: handle(request, state))
    token, task = acquire_task(runtime, fab_hash="b" * 64)
    assert task.run_id == ours and token
    assert acquire_task(runtime, fab_hash="b" * 64) is None
    assert state.get_tasks(run_ids=[other])[0].status.status == "pending"


def test_a_supernode_that_fails_to_start_is_started_again(tmp_path, monkeypatch):
    from fedhar.deploy import client
    from fedhar.deploy.runtime import StartFailed, Tls

    failed = types.SimpleNamespace(process=types.SimpleNamespace(returncode=1), log_path=tmp_path / "supernode.log",
                                   log_tail=lambda lines: "Failed to activate SuperNode")  # fmt: skip
    starts, pauses = [], []

    def start(*args):
        starts.append(args)
        if len(starts) == 1:
            raise StartFailed("SuperNode exited (code 1) while starting", failed)
        raise KeyboardInterrupt  # Ctrl+C stays fatal

    monkeypatch.setattr(client, "start_supernode", start)
    monkeypatch.setattr(client.time, "sleep", pauses.append)
    monkeypatch.setattr(client.signal, "signal", lambda *args: None)
    with pytest.raises(KeyboardInterrupt):
        client.run_client("127.0.0.1:9092", {"data-path": "x"}, Tls(insecure=True), None, tmp_path)
    assert len(starts) == 2 and pauses == [client.RESTART_PAUSE_S[0]]


def test_a_flower_process_that_does_not_come_up_is_stopped(tmp_path, monkeypatch):
    from fedhar.deploy import runtime

    class FakeService:
        def __init__(self, name, command, log_path, env):
            self.name, self.stopped = name, False
            made.append(self)

        def stop(self):
            self.stopped = True

    def never(service, host, port, timeout_s):
        raise runtime.StartFailed(f"{service.name} did not listen", service)

    made = []
    monkeypatch.setattr(runtime, "Service", FakeService)
    monkeypatch.setattr(runtime, "wait_until_listening", never)
    with pytest.raises(runtime.StartFailed):
        runtime.start_supernode("127.0.0.1:9092", runtime.Tls(insecure=True), None, {}, 9999, tmp_path / "s",
                                tmp_path)  # fmt: skip
    assert made[0].stopped


def test_the_death_signal_hook_loads_nothing_in_the_child(monkeypatch):
    import ctypes
    import subprocess
    import sys

    from fedhar.deploy.runtime import die_with_parent

    hook = die_with_parent()
    if not sys.platform.startswith("linux"):
        assert hook is None
        return

    def no_dlopen(*args, **kwargs):
        raise AssertionError("libc loaded after the fork")

    monkeypatch.setattr(ctypes, "CDLL", no_dlopen)  # inherited by the forked child: a dlopen there would fail
    assert subprocess.run(["true"], preexec_fn=hook, check=True).returncode == 0
    assert die_with_parent() is hook


def test_a_supernode_exit_is_explained_with_flowers_own_sentence():
    """A device with a bad key file must see why on the console, not only an exit code (the reason is in
    the SuperNode's log, coloured)."""
    from types import SimpleNamespace

    from fedhar.deploy.client import exit_reason

    log = ("\x1b[92mINFO \x1b[0m:      Starting Flower SuperNode\n"
           "\x1b[91mERROR \x1b[0m:     Exit Code: 302\nUnable to parse the private key file.\n"
           "Node authentication requires elliptic curve private key.\n")  # fmt: skip
    node = SimpleNamespace(log_tail=lambda n: log, process=SimpleNamespace(returncode=1), log_path="x.log")
    assert exit_reason(node) == "Exit Code: 302: Unable to parse the private key file."
    quiet = SimpleNamespace(log_tail=lambda n: "", process=SimpleNamespace(returncode=0), log_path="x.log")
    assert "dropped it" in exit_reason(quiet)
