"""Continual federations end to end, in-process (no Ray): forgetting measured, methods, files, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhar.config import load_config
from fedhar.federated import aggregation
from fedhar.federated.transport import LocalGrid
from tests.continual.test_schedule import STAGES, TWO_DOMAINS

#: enough local training that each stage is learnt (and the other one overwritten)
LEARN = ["train.lr=0.004", "federated.local_epochs=3", "data.synthetic.seconds_per_activity=8"]


@pytest.fixture(autouse=True)
def _server_task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for field, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, field, value)


def run(tmp_path, name, *overrides, resume=False):
    from fedhar.federated.server import ServerJob, run_federation
    from fedhar.results.run import RunDir

    cfg = aggregation.check_strategy(load_config(None, [*TWO_DOMAINS, STAGES, *LEARN, f"output_dir={tmp_path}",
                                                        f"name={name}", *overrides]))  # fmt: skip
    folder = RunDir(tmp_path / name) if resume else RunDir.create(cfg, kind="simulate")
    job = ServerJob(cfg, folder, resume=resume, expected_nodes=4, progress=False, simulated=True)
    return run_federation(LocalGrid(4), job), folder


def results(folder) -> dict:
    return json.loads(folder.file("continual.json").read_text())


def test_naive_forgets_the_first_domain_and_replay_forgets_less(tmp_path):
    _, naive_dir = run(tmp_path, "naive")
    _, replay_dir = run(tmp_path, "replay", "continual.method=replay", "continual.replay_size=64")
    naive, replay = results(naive_dir), results(replay_dir)
    R = np.asarray(naive["matrix"]["test"]["macro_f1"])
    assert R.shape == (2, 2)
    forgetting = naive["metrics"]["test"]["macro_f1"]["forgetting"]
    assert forgetting == pytest.approx(R[0, 0] - R[1, 0])
    assert forgetting >= 0.1, R  # learning the wrist watch overwrote the waist phone
    assert replay["metrics"]["test"]["macro_f1"]["forgetting"] <= forgetting - 0.05, (R, replay["matrix"])
    assert replay["matrix"]["test"]["macro_f1"][1][0] > R[1, 0]


def test_results_files_and_rows_of_a_continual_run(tmp_path):
    summary, folder = run(tmp_path, "files", "continual.method=l2", "continual.reg_strength=0.5")
    out = results(folder)
    assert out["domains"] == ["waist", "wrist"] and out["complete"]
    for split in ("test", "val"):
        for score in ("macro_f1", "accuracy"):
            assert np.asarray(out["matrix"][split][score]).shape == (2, 2)
            assert len(out["initial"][split][score]) == 2  # the untrained model: FWT's reference
    m = out["metrics"]["test"]["macro_f1"]
    R, b = np.asarray(out["matrix"]["test"]["macro_f1"]), out["initial"]["test"]["macro_f1"]
    assert m["bwt"] == pytest.approx(R[1, 0] - R[0, 0]) and m["fwt"] == pytest.approx(R[0, 1] - b[1])
    assert m["final_average"] == pytest.approx(R[1].mean())
    assert summary["continual"]["test"]["final_average"] == pytest.approx(R[1].mean())
    assert set(out["metrics"]["test"]["per_class_forgetting"]) >= {"WALKING", "LAYING"}
    assert [w["after_stage"] for w in out["metrics"]["test"]["worst_subject_after_stage"]] == ["waist", "wrist"]
    for name in ("continual.csv", "accuracy_matrix.png", "continual_curves.png"):
        assert folder.file(name).stat().st_size > 0
    rows = json.loads(folder.file("rounds.json").read_text())["rounds"]
    assert [r["stage"] for r in rows] == [0, 0, 1, 1, 1]
    assert all("test_macro_f1@waist" in r and "test_macro_f1@wrist" in r for r in rows)
    assert [r["clients_sampled"] for r in rows] == [3] * 5  # subject 4 (stage 1) and 1 (stage 2) sit out
    # l2 sends the previous stage's tensors with every train message of the later stage: twice the downlink
    per_stage = {b["stage"]: b["bytes_per_client_per_round"] for b in out["bytes_per_stage"]}
    assert per_stage["wrist"] > 1.3 * per_stage["waist"]


def test_ewc_collects_a_federated_fisher_and_a_resume_across_the_boundary_continues_exactly(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from fedhar.federated import server

    args = ["continual.method=ewc", "continual.fisher_windows=32", "continual.reg_strength=2"]
    _, full = run(tmp_path, "full", *args)
    saved = load_file(str(full.file(server.STATE_DIR) / "round-0005" / server.CONTINUAL_STATE_FILE))
    importance = {k: v for k, v in saved.items() if k.startswith("importance/")}
    assert importance and np.mean(np.concatenate([v.ravel() for v in importance.values()])) == pytest.approx(1, rel=1e-4)
    assert all((v >= 0).all() for v in importance.values())

    real_save = server.RoundLoop.save_round

    def stop_at_the_boundary(self, rnd):
        real_save(self, rnd)
        if rnd == 2:
            raise KeyboardInterrupt  # cut off after stage 1's last round

    monkeypatch.setattr(server.RoundLoop, "save_round", stop_at_the_boundary)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "part", *args)
    monkeypatch.setattr(server.RoundLoop, "save_round", real_save)
    run(tmp_path, "part", *args, resume=True)
    part = tmp_path / "part"
    a, b = results(full), json.loads((part / "continual.json").read_text())
    assert a["matrix"] == b["matrix"] and a["initial"] == b["initial"]  # the matrix intact across the resume
    rows_a = json.loads(full.file("rounds.json").read_text())["rounds"]
    rows_b = json.loads((part / "rounds.json").read_text())["rounds"]
    assert [r["test_macro_f1"] for r in rows_a] == [r["test_macro_f1"] for r in rows_b]
    final_a = load_file(str(full.file(server.STATE_DIR) / "round-0005" / "trainable.safetensors"))
    final_b = load_file(str(part / server.STATE_DIR / "round-0005" / "trainable.safetensors"))
    assert all(np.array_equal(final_a[k], final_b[k]) for k in final_a)


def test_a_hostile_fisher_estimate_is_rejected_with_its_update():
    from flwr.app import Message, RecordDict

    from fedhar.continual import regularize
    from fedhar.federated.records import state_to_record
    from fedhar.federated.server import RoundLoop

    loop = RoundLoop.__new__(RoundLoop)
    loop.spec = {"w": ((2,), np.dtype("float32"))}
    loop.fisher_spec = loop.spec  # ewc_importance: parameters
    bad = Message(RecordDict({regularize.FISHER_REPLY: state_to_record({"w": np.array([-1.0, 2.0], np.float32)})}),
                  dst_node_id=1, message_type="train")  # fmt: skip
    with pytest.raises(Exception, match="negative"):
        loop.check_fisher(bad)
    ok = Message(RecordDict({regularize.FISHER_REPLY: state_to_record({"w": np.array([1e6, 3e6], np.float32)})}),
                 dst_node_id=1, message_type="train")  # fmt: skip
    assert loop.check_fisher(ok)["w"] == pytest.approx([0.5, 1.5])  # scaled: a huge estimate weighs no more
