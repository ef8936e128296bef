"""The round loop against bad or missing answers: client evaluation, setup answers, refused messages, hung nodes."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedhar.errors import ConfigError, DataError, FedharError
from fedhar.federated import membership as M
from fedhar.federated import server as S
from fedhar.federated import transport as T
from fedhar.federated.records import state_to_record
from tests.federated.test_federated import DirectGrid, _run_direct, tiny_cfg
from tests.federated.test_federated import _server_task_identity  # noqa: F401 - an autouse fixture


class ScriptedGrid(DirectGrid):
    """Nodes that answer with ``answer(message)``; None: the node never answers (it hangs)."""

    def __init__(self, nodes: list[int], answer):
        super().__init__(0)
        self.nodes, self.answer, self.sent = nodes, answer, []

    def get_node_ids(self):
        return list(self.nodes)

    def handle(self, message: Message) -> Message | None:
        self.sent.append(message.metadata.dst_node_id)
        return self.answer(message)

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if self.replies.get(i) is not None]


def reply(message: Message, name: str = "c", **metrics) -> Message:
    content = RecordDict({"client": ConfigRecord({"name": name}), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=message)


def bare_members(grid, *overrides: str) -> M.Membership:
    """Membership without a real model or data: enough for its message checks."""
    job = types.SimpleNamespace(expected_nodes=len(grid.nodes), stop=None, poll_interval_s=0.01, progress=False,
                                node_names=None, cfg=tiny_cfg(*overrides), run=None)  # fmt: skip
    model = types.SimpleNamespace(data=types.SimpleNamespace(normalizer=None, window_len=2,
                                                             layout=types.SimpleNamespace(num_channels=6)))
    return M.Membership(grid, job, model, say=lambda text: None)


def test_metrics_must_hold_a_count_and_finite_numbers():
    grid = ScriptedGrid([1], lambda m: None)
    msg = Message(RecordDict(), dst_node_id=1, message_type="evaluate")
    grid.push_messages([msg])
    assert T.check_metrics(reply(msg, **{"num-examples": 3, "accuracy": 0.5})) == (3, {"accuracy": 0.5})
    for metrics, problem in [({"accuracy": 0.5}, "no num-examples"), ({"num-examples": 2.5}, "not a count"),
                             ({"num-examples": -1}, "not a count"), ({"num-examples": float("inf")}, "finite"),
                             ({"num-examples": 3, "loss": float("nan")}, "metric loss is nan")]:  # fmt: skip
        with pytest.raises(FedharError, match=problem):
            T.check_metrics(reply(msg, **metrics))


def test_bad_client_evaluations_are_left_out_with_a_reason_and_the_round_goes_on(tmp_path, monkeypatch):
    from fedhar.federated import client

    real = client.evaluate_client

    def flaky(job, data, state):
        out = real(job, data, state)
        return {**out, "loss": float("nan")} if data.name == "subject-2" else out

    monkeypatch.setattr(client, "evaluate_client", flaky)
    _, run = _run_direct(tmp_path, "evalnan", "federated.rounds=1", "federated.client_val_fraction=0.25")
    data = json.loads(run.file("rounds.json").read_text())
    row, clients = data["rounds"][0], {c["client"]: c for c in data["clients"]}
    assert row["clients_updated"] == 3
    assert row["client_eval_errors"] == ["subject-2: evaluation rejected: metric loss is nan, not a finite number"]
    assert "client_eval_loss" not in clients["subject-2"] and clients["subject-2"]["eval_bytes_up"] > 0
    assert np.isfinite(clients["subject-1"]["client_eval_loss"])


def test_setup_fails_clearly_when_no_node_holds_training_windows():
    grid = ScriptedGrid([1, 2], lambda m: reply(m, f"node-{m.metadata.dst_node_id}", **{"num-examples": 0}))
    with pytest.raises(DataError, match="none of the 2 nodes that answered holds training windows.*data.classes"):
        bare_members(grid).describe(0, 1, fit=True)


@pytest.mark.parametrize("metrics, problem", [
    ({"num-examples": 4, "num-values": float("inf")}, "metric num-values is inf"),
    ({"num-examples": float("inf"), "num-values": 8.0}, "metric num-examples is inf"),
    ({"num-examples": 4, "num-values": 0.0}, "0 values per channel, but 4 windows of 2 samples hold 8"),
])  # fmt: skip
def test_impossible_setup_counts_are_rejected(metrics, problem):
    grid = ScriptedGrid([1], lambda m: None)
    msg = Message(RecordDict(), dst_node_id=1, message_type=M.MESSAGE_DESCRIBE)
    grid.push_messages([msg])
    answer = reply(msg, "phone", **metrics)
    answer.content["moments"] = state_to_record({"sum": np.zeros(6), "sum_sq": np.ones(6)})
    with pytest.raises(FedharError, match=problem):
        bare_members(grid)._check_description(1, answer, with_moments=True, with_posthoc=False)


def test_a_message_the_superlink_refuses_is_an_error_reply_and_a_short_id_list_an_error():
    class Refusing(ScriptedGrid):
        def push_messages(self, messages):
            ids = list(super().push_messages(messages))
            return self.refuse(ids)

    grid = Refusing([1, 2], lambda m: reply(m, **{"num-examples": 1}))
    grid.refuse = lambda ids: ["", ids[1]]  # HttpGrid: "" for the message to a node that left
    messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (1, 2)]
    replies = T.send_and_collect(grid, messages, 1.0, None, 0.01)
    assert "refused the message" in T.reply_error(replies[1]) and T.reply_error(replies[2]) is None
    grid.refuse = lambda ids: []  # HttpGrid after HTTP 413; InMemoryGrid drops what it refuses
    messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (1, 2)]
    with pytest.raises(FedharError, match=r"accepted 0 of 2 `train` messages.*fraction_train"):
        T.send_and_collect(grid, messages, 1.0, None, 0.01)


def test_with_a_window_at_most_in_flight_messages_wait_and_a_hung_node_holds_up_no_other():
    """Five nodes, two in flight: never more than two wait, every node is asked once, the hung one (node 3) gets
    no reply after its timeout and the nodes pushed after it are still asked and answered."""

    class Watched(ScriptedGrid):
        def __init__(self, *args):
            super().__init__(*args)
            self.waiting, self.most = set(), 0

        def push_messages(self, messages):
            ids = list(super().push_messages(messages))
            self.waiting |= set(ids)
            self.most = max(self.most, len(self.waiting))
            return ids

        def pull_messages(self, message_ids):
            out = super().pull_messages(message_ids)
            self.waiting -= {r.metadata.reply_to_message_id for r in out}
            self.waiting &= set(message_ids)  # what the caller stopped waiting for (timed out) is not in flight
            return out

    grid = Watched([1, 2, 3, 4, 5], lambda m: None if m.metadata.dst_node_id == 3 else reply(m, **{"num-examples": 1}))
    messages = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in (1, 2, 3, 4, 5)]
    replies = T.send_and_collect(grid, messages, 0.3, None, 0.01, in_flight=2)
    assert sorted(grid.sent) == [1, 2, 3, 4, 5] and grid.most == 2
    assert replies[3] is None and all(T.reply_error(replies[n]) is None for n in (1, 2, 4, 5))
    everything = T.send_and_collect(ScriptedGrid([1, 2, 3], lambda m: reply(m, **{"num-examples": 1})),
                                    messages[:3], 0.3, None, 0.01)  # fmt: skip
    assert sorted(everything) == [1, 2, 3]  # without a window: all at once, as before


def test_a_node_that_hangs_at_setup_costs_the_full_timeout_once(tmp_path, monkeypatch):
    """Node 103 never answers: asked at setup (full timeout), again before round 2 (short), not in round 3."""
    from fedhar.federated.server import ServerJob, run_federation
    from fedhar.results.run import RunDir

    class HungNode(ScriptedGrid):
        def __init__(self):
            DirectGrid.__init__(self, 3)
            self.nodes, self.sent = [100, 101, 102, 103], []

        def handle(self, message):
            self.sent.append(message.metadata.dst_node_id)
            return None if message.metadata.dst_node_id == 103 else DirectGrid.handle(self, message)

    waits = []
    real_send = T.send_and_collect

    def send(grid, messages, timeout, *args, **kwargs):
        if 103 in [m.metadata.dst_node_id for m in messages]:
            waits.append(timeout)
        return real_send(grid, messages, timeout, *args, **kwargs)

    monkeypatch.setattr(M, "send_and_collect", send)
    monkeypatch.setattr(M, "DESCRIBE_RETRY_TIMEOUT_S", 0.1)
    cfg = tiny_cfg(f"output_dir={tmp_path}", "name=hung", "federated.rounds=3", "federated.round_timeout_s=0.5")
    grid = HungNode()
    run_federation(grid, ServerJob(cfg, RunDir.create(cfg, kind="server"), expected_nodes=4, progress=False))
    assert waits == [0.5, 0.1] and grid.sent.count(103) == 2
    rows = json.loads((tmp_path / "hung" / "rounds.json").read_text())["rounds"]
    assert [r["clients_updated"] for r in rows] == [3, 3, 3]
    federation = json.loads((tmp_path / "hung" / "federation.json").read_text())
    assert federation["failed_nodes"] == ["node 103: no answer within 0.1 s (a retry) (asked again before round 4)"]


def test_relative_config_files_are_found_outside_a_checkout(tmp_path, monkeypatch):
    from fedhar.config import load_config
    from fedhar.config import shipped_config

    monkeypatch.chdir(tmp_path)
    path = S.resolve_config_path("configs/default.yaml")
    assert path == shipped_config("default.yaml") and load_config(path).name
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text("name: mine\n")  # the working directory comes first
    assert load_config(S.resolve_config_path("configs/default.yaml")).name == "mine"
    with pytest.raises(ConfigError, match="absolute path"):
        S.resolve_config_path("elsewhere/x.yaml")
    with pytest.raises(ConfigError, match="--config PATH"):
        shipped_config("nothing.yaml")


def test_a_deployments_server_needs_only_the_held_out_subjects(tmp_path):
    """Training subjects that the server's data lack (the devices hold them) stop a simulation, not a deployment."""
    from fedhar.federated.data import held_out_split
    from fedhar.federated.server import RoundLoop, ServerJob
    from fedhar.results.run import RunDir

    cfg = tiny_cfg(f"output_dir={tmp_path}", "data.split.train=[1, 2, 3, 77]")  # subject 77: only on a device
    val, test = held_out_split(cfg)
    assert set(val.subject.tolist()) == {"4"} and set(test.subject.tolist()) == {"5"}
    run = RunDir.create(cfg, kind="server")
    loop = RoundLoop(None, ServerJob(cfg, run, progress=False, simulated=False))
    assert len(loop.val) == len(val) and len(loop.test) == len(test) and "train_subjects" not in loop.provenance
    with pytest.raises(DataError, match=r"subjects \['77'\] that are not in the data"):
        RoundLoop(None, ServerJob(cfg, run, progress=False, simulated=True))
    with pytest.raises(DataError, match=r"held-out subjects \['9'\] are not in the server's data"):
        held_out_split(tiny_cfg("data.split.test=[9]"))
