"""Malicious clients against the round loop: forged setup answers, poisoned updates, impersonation.

Every case ends in a clear refusal (with its reason in the results) or a bounded effect, and the run goes
on: one device never stops the federation. The round loop runs without an engine (``DirectGrid``); node
102 is the attacker, 100 and 101 are honest.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import MetricRecord

from fedhar.federated import server as S
from fedhar.federated.client import MESSAGE_DESCRIBE
from fedhar.federated.records import state_to_record
from tests.federated.test_federated import DirectGrid, tiny_cfg
from tests.federated.test_federated import _server_task_identity  # noqa: F401 - an autouse fixture

ATTACKER = 102


class HostileGrid(DirectGrid):
    """Node ``ATTACKER``'s replies go through ``tamper(message_type, reply, global_state)`` before the server sees them."""

    def __init__(self, tamper, num_nodes: int = 3):
        super().__init__(num_nodes)
        self.tamper = tamper

    def handle(self, message):
        reply = super().handle(message)
        if message.metadata.dst_node_id == ATTACKER:
            sent = message.content.array_records.get("arrays")
            glob = {k: v.numpy() for k, v in sent.items()} if sent is not None else None
            self.tamper(message.metadata.message_type, reply, glob)
        return reply


def run(tmp_path, name, tamper, *overrides, node_names=None, num_nodes=3):
    from fedhar.results.run import RunDir

    cfg = tiny_cfg(f"output_dir={tmp_path}", f"name={name}", "federated.rounds=1", *overrides)
    run_dir = RunDir.create(cfg, kind="simulate")
    job = S.ServerJob(cfg, run_dir, expected_nodes=num_nodes, progress=False, simulated=True, node_names=node_names)
    S.run_federation(HostileGrid(tamper, num_nodes), job)
    rounds = json.loads(run_dir.file("rounds.json").read_text())
    return {
        "federation": json.loads(run_dir.file("federation.json").read_text()),
        "round": rounds["rounds"][0],
        "clients": {c["client"]: c for c in rounds["clients"]},
        "state": _final_state(run_dir),
    }


def _final_state(run_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run_dir.file("checkpoint") / "trainable.safetensors"))


def metrics_of(reply) -> dict:
    return dict(reply.content["metrics"])


def set_metrics(reply, **changes) -> None:
    reply.content["metrics"] = MetricRecord({**metrics_of(reply), **changes})


def moments_of(reply) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content["moments"].items()}


def honest(*_):
    pass


# ---- forged setup answers ------------------------------------------------------------------------


def _inflate_count_only(kind, reply, _):
    if kind == MESSAGE_DESCRIBE:
        set_metrics(reply, **{"num-examples": 1_000_000_000})


def _negative_variance(kind, reply, _):
    if kind == MESSAGE_DESCRIBE:
        m = moments_of(reply)
        m["sum_sq"] = m["sum"] ** 2 / metrics_of(reply)["num-values"] * 0.5  # below sum²/count
        reply.content["moments"] = state_to_record(m)


def _huge_mean(kind, reply, _):
    if kind == MESSAGE_DESCRIBE:
        m = moments_of(reply)
        count = metrics_of(reply)["num-values"]
        m["sum"] = m["sum"] + 1e4 * count  # a mean of 10,000 g: drags the normaliser anywhere
        m["sum_sq"] = m["sum"] ** 2 / count + m["sum_sq"]
        reply.content["moments"] = state_to_record(m)


def _values_do_not_match_windows(kind, reply, _):
    if kind == MESSAGE_DESCRIBE:
        set_metrics(reply, **{"num-values": metrics_of(reply)["num-values"] * 50})


def _nan_moments(kind, reply, _):
    if kind == MESSAGE_DESCRIBE:
        m = moments_of(reply)
        m["sum"][0] = np.nan
        reply.content["moments"] = state_to_record(m)


@pytest.mark.parametrize("tamper, reason", [
    (_inflate_count_only, "more than any device records"),
    (_negative_variance, "negative variance"),
    (_huge_mean, "beyond what an IMU records"),
    (_values_do_not_match_windows, "values per channel"),
    (_nan_moments, "NaN or Inf"),
])  # fmt: skip
def test_forged_setup_answers_are_refused_with_a_reason_and_the_run_goes_on(tmp_path, tamper, reason):
    clean = run(tmp_path, "clean", honest)
    out = run(tmp_path, "forged", tamper)
    fed = out["federation"]
    assert [c["name"] for c in fed["clients"]] == [c["name"] for c in clean["federation"]["clients"]][:2]
    assert len(fed["failed_nodes"]) == 1 and fed["failed_nodes"][0].startswith(f"node {ATTACKER}: setup answer")
    assert reason in fed["failed_nodes"][0]
    assert out["round"]["clients_updated"] == 2
    norm = fed["normalizer"]
    assert np.isfinite(norm["mean"]).all() and (np.asarray(norm["std"]) > 0).all()


def test_an_inflated_but_consistent_claim_is_capped_in_the_average_and_the_normaliser(tmp_path):
    """The attacker claims 1000x its windows with moments to match; its weight is capped at 10x the median."""
    factor = 1000

    def inflate(kind, reply, _):
        if kind in (MESSAGE_DESCRIBE, "train"):
            m = metrics_of(reply)
            changes = {"num-examples": m["num-examples"] * factor}
            if "num-values" in m:
                changes["num-values"] = m["num-values"] * factor
                reply.content["moments"] = state_to_record({k: v * factor for k, v in moments_of(reply).items()})
            set_metrics(reply, **changes)

    clean = run(tmp_path, "clean", honest)
    out = run(tmp_path, "inflated", inflate)
    counts = {c["name"]: c["windows"] for c in clean["federation"]["clients"]}
    attacker = sorted(counts)[2]
    claimed = {**counts, attacker: counts[attacker] * factor}
    cap = int(10 * np.median(list(claimed.values())))
    by_name = {c["name"]: c for c in out["federation"]["clients"]}
    assert by_name[attacker]["windows"] == counts[attacker] * factor and by_name[attacker]["weight"] == cap
    assert out["federation"]["weight_cap"] == cap
    assert out["clients"][attacker]["weight"] == cap < out["clients"][attacker]["num_examples"]
    # the attacker's share of the average is cap / (cap + the others), not ~1
    share = cap / (cap + sum(v for k, v in counts.items() if k != attacker))
    assert share < 0.95
    # its moments count as much as its capped weight: the normaliser stays near the honest one
    # (its data are real, only its count lies)
    np.testing.assert_allclose(out["federation"]["normalizer"]["mean"], clean["federation"]["normalizer"]["mean"],
                               atol=0.2)  # fmt: skip


# ---- poisoned updates ----------------------------------------------------------------------------


def _poison(change):
    def tamper(kind, reply, glob):
        if kind == "train":
            state = {k: v.numpy() for k, v in reply.content["arrays"].items()}
            reply.content["arrays"] = state_to_record(change(state, glob))

    return tamper


def _first(state):
    return next(iter(state))


def _with_nan(state, _):
    state[_first(state)] = state[_first(state)].copy()
    state[_first(state)].flat[0] = np.nan
    return state


def _wrong_shape(state, _):
    state[_first(state)] = np.zeros((3, 3), np.float32)
    return state


def _wrong_dtype(state, _):
    state[_first(state)] = state[_first(state)].astype(np.float64)
    return state


def _extra_tensor(state, _):
    return {**state, "backbone.embed_tokens.weight": np.zeros((4, 4), np.float32)}


def _missing_tensor(state, _):
    return {k: v for k, v in list(state.items())[1:]}


@pytest.mark.parametrize("change, reason", [
    (_with_nan, "NaN or Inf"), (_wrong_shape, "shape"), (_wrong_dtype, "float64"),
    (_extra_tensor, "backbone.embed_tokens.weight"), (_missing_tensor, "missing"),
])  # fmt: skip
def test_malformed_updates_are_rejected_and_the_round_goes_on(tmp_path, change, reason):
    out = run(tmp_path, "bad", _poison(change))
    row = out["round"]
    assert row["clients_updated"] == 2 and row["clients_rejected"] == 1
    assert len(row["rejected"]) == 1 and "update rejected" in row["rejected"][0] and reason in row["rejected"][0]
    assert all(np.isfinite(v).all() for v in out["state"].values())


def _distance(a: dict, b: dict) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


@pytest.mark.parametrize("attack", ["scale", "zero", "sign-flip"])
def test_a_poisoned_update_moves_the_bounded_average_little_and_the_plain_average_far(tmp_path, attack):
    """Honest clients' aggregate vs the aggregate with one poisoned update, with and without the norm bound."""
    changes = {
        "scale": lambda s, g: {k: g[k] + 1e6 * (v - g[k]) for k, v in s.items()},
        "zero": lambda s, g: {k: np.zeros_like(v) for k, v in s.items()},
        "sign-flip": lambda s, g: {k: g[k] - 1e3 * (v - g[k]) for k, v in s.items()},
    }
    tamper = _poison(changes[attack])
    clean = run(tmp_path, "clean", honest)
    bounded = run(tmp_path, "bounded", tamper)
    plain = run(tmp_path, "plain", tamper, "federated.update_norm_bound=null")
    step = _distance(clean["state"], _initial_state(tmp_path))  # how far one honest round moves the model
    assert _distance(bounded["state"], clean["state"]) < 5 * step
    # a zeroed update pulls a plain average towards zero by its weight's share: bounded already, less with the bound;
    # scaled ones decide a plain average
    far = 1.5 if attack == "zero" else 20
    assert _distance(plain["state"], clean["state"]) > far * _distance(bounded["state"], clean["state"])
    attacker = sorted(bounded["clients"])[-1]
    assert bounded["round"]["clients_clipped"] == 1 and bounded["clients"][attacker]["update_scale"] < 1 / far
    assert plain["round"]["clients_clipped"] == 0


def _initial_state(tmp_path) -> dict[str, np.ndarray]:
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import get_trainable_state

    cfg = tiny_cfg(f"output_dir={tmp_path}")
    _, val, _ = S.subject_split(cfg)  # the server builds the same seeded model from the held-out windows' spec
    return get_trainable_state(build_model(cfg.model, DataSpec.from_windows(val), cfg.seed))


def test_the_reject_action_leaves_the_poisoned_update_out(tmp_path):
    out = run(tmp_path, "reject", _poison(lambda s, g: {k: g[k] + 1e6 * (v - g[k]) for k, v in s.items()}),
              "federated.update_norm_action=reject")  # fmt: skip
    row = out["round"]
    assert row["clients_updated"] == 2 and row["clients_rejected"] == 1
    assert "exceeds 10 x the round's median" in row["rejected"][0]


def test_a_train_reply_claiming_other_counts_than_at_setup_is_rejected(tmp_path):
    def recount(kind, reply, _):
        if kind == "train":
            set_metrics(reply, **{"num-examples": metrics_of(reply)["num-examples"] + 1})

    row = run(tmp_path, "recount", recount)["round"]
    assert row["clients_rejected"] == 1 and "it described" in row["rejected"][0]


# ---- impersonation -------------------------------------------------------------------------------


def _claim_name(name):
    def tamper(kind, reply, _):
        reply.content["client"]["name"] = name

    return tamper


def test_a_node_claiming_a_taken_name_is_left_out_and_the_run_goes_on(tmp_path):
    clean = run(tmp_path, "clean", honest)
    victim = clean["federation"]["clients"][0]["name"]
    out = run(tmp_path, "clash", _claim_name(victim))
    fed = out["federation"]
    assert [c["name"] for c in fed["clients"]].count(victim) == 1 and len(fed["clients"]) == 2
    assert any(f"client name {victim} is already used by node" in e for e in fed["failed_nodes"])
    assert out["round"]["clients_updated"] == 2


def test_authenticated_names_replace_claimed_ones(tmp_path):
    """With device keys (``node_names``), results name each node by its key, whatever it claims."""
    keys = {100: "watch-anna", 101: "watch-ben", 102: "phone-carl"}
    out = run(tmp_path, "keys", _claim_name("subject-1"), node_names=keys.get)
    fed = out["federation"]
    assert sorted(c["name"] for c in fed["clients"]) == sorted(keys.values())
    by_name = {c["name"]: c for c in fed["clients"]}
    assert by_name["phone-carl"]["claimed_name"] == "subject-1"
    assert set(out["clients"]) == set(keys.values()) and fed["failed_nodes"] == []
