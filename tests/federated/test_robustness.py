"""Differential privacy and simulated attacks through the real round loop (no Ray: ``DirectGrid``)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from fedhar.errors import ConfigError
from tests.federated.test_federated import _run_direct
from tests.federated.test_federated import _server_task_identity  # noqa: F401 - an autouse fixture

DP = ["federated.dp.noise_multiplier=1.0", "federated.dp.clipping_norm=0.5"]


def rounds(run) -> list[dict]:
    return json.loads(run.file("rounds.json").read_text())["rounds"]


def clients(run) -> list[dict]:
    return json.loads(run.file("rounds.json").read_text())["clients"]


def test_server_side_dp_reports_a_finite_growing_epsilon_every_round(tmp_path):
    summary, run = _run_direct(tmp_path, "dp", *DP, "federated.rounds=3")
    eps = [r["dp_epsilon"] for r in rounds(run)]
    assert all(np.isfinite(e) and e > 0 for e in eps) and eps[0] < eps[1] < eps[2]
    assert summary["dp"]["spent"]["epsilon"] == pytest.approx(eps[-1]) and summary["dp"]["spent"]["releases"] == 3
    assert "no amplification" in summary["dp"]["accounting"]
    assert {c["weight"] for c in clients(run)} == {1}  # user-level DP: every client counts the same


def test_a_privacy_budget_stops_the_run_cleanly_before_the_round_that_would_exceed_it(tmp_path):
    _, run = _run_direct(tmp_path, "dp3", *DP, "federated.rounds=3")
    eps = [r["dp_epsilon"] for r in rounds(run)]
    budget = (eps[1] + eps[2]) / 2  # room for two rounds, not three
    summary, run = _run_direct(tmp_path, "budget", *DP, "federated.rounds=5", f"federated.dp.max_epsilon={budget}")
    assert [r["round"] for r in rounds(run)] == [1, 2] and summary["rounds_completed"] == 2
    assert "before round 3" in summary["stopped"] and summary["dp"]["spent"]["epsilon"] <= budget
    assert (run.path / "checkpoint" / "trainable.safetensors").is_file()


def test_client_side_dp_clips_every_update_on_the_device(tmp_path):
    _, run = _run_direct(tmp_path, "cdp", *DP, "federated.dp.side=client", "federated.rounds=1",
                         "federated.update_norm_bound=null")  # fmt: skip
    norms = [c["update_norm"] for c in clients(run)]
    assert len(norms) == 3 and max(norms) <= 0.5 * (1 + 1e-4)
    _, plain = _run_direct(tmp_path, "nodp", "federated.rounds=1", "federated.update_norm_bound=null")
    assert max(c["update_norm"] for c in clients(plain)) > 0.5  # so the clipping above did something


def test_adaptive_clipping_moves_its_norm_and_is_not_accounted(tmp_path):
    summary, run = _run_direct(tmp_path, "adaptive", "federated.dp.clipping=adaptive", "federated.dp.delta=null",
                               "federated.dp.noise_multiplier=0.1", "federated.dp.clipping_norm=0.01",
                               "federated.rounds=2")  # fmt: skip
    norms = [r["dp_clipping_norm"] for r in rounds(run)]
    assert norms[0] != norms[1] and "dp_epsilon" not in rounds(run)[0]
    assert summary["dp"]["spent"] is None and "fixed clipping only" in summary["dp"]["accounting"]


def test_dp_settings_that_cannot_work_fail_before_round_one(tmp_path):
    from tests.federated.test_federated import tiny_cfg

    with pytest.raises(ConfigError, match="max_epsilon must be positive and needs fixed clipping"):
        tiny_cfg("federated.dp.clipping=adaptive", "federated.dp.max_epsilon=8")
    with pytest.raises(ConfigError, match="needs noise_multiplier > 0"):
        tiny_cfg("federated.dp.noise_multiplier=0")
    with pytest.raises(ConfigError, match="side must be server or client"):
        tiny_cfg("federated.dp.side=both")
    with pytest.raises(ConfigError, match="FedAvg.aggregate_train"):  # Flower accounts on FedAvg's mean only
        tiny_cfg("federated.strategy=fedmedian", *DP)


# ---- simulated attacks -----------------------------------------------------------------------------


def test_a_sign_flip_attack_is_applied_to_its_clients_and_marked_in_the_results(tmp_path):
    attack = ["federated.attack.kind=sign-flip", "federated.attack.factor=50", "federated.attack.clients=1",
              "federated.rounds=1", "federated.update_norm_bound=null"]  # fmt: skip
    summary, run = _run_direct(tmp_path, "attacked", *attack)
    _, clean = _run_direct(tmp_path, "clean", "federated.rounds=1", "federated.update_norm_bound=null")
    assert summary["attack"]["kind"] == "sign-flip" and len(summary["attack"]["attackers"]) == 1
    attacker = summary["attack"]["attackers"][0]
    rows = {c["client"]: c for c in clients(run)}
    honest = {c["client"]: c for c in clients(clean)}
    assert rows[attacker]["attacker"] and not any(r["attacker"] for n, r in rows.items() if n != attacker)
    assert rows[attacker]["update_norm"] == pytest.approx(50 * honest[attacker]["update_norm"], rel=1e-3)
    assert rounds(run)[0]["clients_attacking"] == 1


def test_label_flip_shifts_the_attackers_labels_only():
    from fedhar.federated.attacks import attacking_clients
    from fedhar.federated.data import client_data, simulated_partition
    from tests.federated.test_federated import tiny_cfg

    cfg = tiny_cfg("federated.attack.kind=label-flip", "federated.attack.clients=1")
    clean_cfg = tiny_cfg()
    parts, names = simulated_partition(cfg)
    (attacker,) = attacking_clients(cfg, names)
    for pid, name in enumerate(names):
        poisoned, clean = client_data(cfg, {"partition-id": pid}, 0), client_data(clean_cfg, {"partition-id": pid}, 0)
        expected = (clean.train.y + 1) % len(clean.train.label_names) if name == attacker else clean.train.y
        assert np.array_equal(poisoned.train.y, expected) and np.array_equal(poisoned.train.x, clean.train.x)


def test_attacks_are_absent_from_the_deployed_path(tmp_path):
    """A deployment refuses an attack config; the device's code paths never read one."""
    from fedhar.federated import client, data
    from fedhar.federated.server import RoundLoop, ServerJob
    from fedhar.results.run import RunDir
    from tests.federated.test_federated import tiny_cfg

    cfg = tiny_cfg(f"output_dir={tmp_path}", "federated.attack.kind=scale")
    with pytest.raises(ConfigError, match="for simulation benchmarks only"):
        RoundLoop(None, ServerJob(cfg, RunDir.create(cfg, kind="server"), progress=False, simulated=False))
    for function in (data.device_windows, client.handle_train, client.train_client, client.handle_describe):
        assert "attack" not in inspect.getsource(function), function.__name__
    deploy = Path(__file__).resolve().parents[1] / "fedhar" / "deploy"
    assert not [p.name for p in deploy.glob("*.py") if "attacks" in p.read_text()]


@pytest.mark.parametrize("extra", [[], ["federated.dp.clipping=adaptive", "federated.dp.delta=null",
                                         "federated.dp.noise_multiplier=0.1"]],
                         ids=["fixed-accounted", "adaptive"])  # fmt: skip
def test_a_resumed_dp_run_continues_its_accountant_and_clipping_norm_exactly(tmp_path, extra):
    _, full = _run_direct(tmp_path, "full", *DP, *extra, "federated.rounds=2")
    _run_direct(tmp_path, "part", *DP, *extra, "federated.rounds=1")
    _, part = _run_direct(tmp_path, "part", *DP, *extra, "federated.rounds=2", resume=True)
    for key in ("test_macro_f1", "val_loss", "dp_clipping_norm", *(["dp_epsilon"] if not extra else [])):
        assert [r[key] for r in rounds(part)] == [r[key] for r in rounds(full)], key
