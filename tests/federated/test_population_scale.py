"""Population scale: many small clients, a fixed number per round, and a stage's set-up costing per sampled node.

The message counts come from a fake Grid that answers the setup query itself (no model, no data): at a population
of hundreds, the run's set-up asks each node once, and a later stage asks only the nodes its rounds draw.
"""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedhar.config import DataConfig, load_config
from fedhar.data.partition import partition
from fedhar.data.pipeline import load_windows
from fedhar.data.preprocess import Normalizer
from fedhar.errors import ConfigError
from fedhar.federated.client import MESSAGE_DESCRIBE
from fedhar.federated.membership import Membership, sample_size

# ---- many small clients ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def windows():
    """40 synthetic subjects of short recordings (a few thousand windows)."""
    spec = {"subjects": 40, "devices": ["phone-a"], "placements": ["waist"], "seconds_per_activity": 8}
    return load_windows(DataConfig(synthetic=spec, window=64), seed=0, use_cache=False)


@pytest.mark.parametrize("scheme, clients", [("iid", 300), ("dirichlet", 300), ("dirichlet", 750)])
def test_hundreds_of_clients_are_disjoint_and_use_every_window_once(windows, scheme, clients):
    n = len(windows)
    assert n >= clients
    parts = partition(windows, scheme, num_clients=clients, alpha=0.5, seed=3)
    assert len(parts) == clients
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))  # disjoint, every window once
    assert min(len(p) for p in parts) >= min(10, n // clients)  # every client can form a batch


def test_more_clients_than_windows_stops_with_how_many_the_data_can_give(windows):
    with pytest.raises(ConfigError) as e:
        partition(windows, "iid", num_clients=len(windows) + 1)
    message = str(e.value)
    assert "\n" not in message and f"at most {len(windows)} clients" in message


def test_clients_per_round_beyond_the_clients_with_data_stops_before_anything_starts():
    from fedhar.federated.simulate import check_federation

    cfg = load_config(None, ["data.synthetic.subjects=6", "data.synthetic.seconds_per_activity=4",
                             "data.split.val=[5]", "data.split.test=[6]", "federated.clients_per_round=5"])  # fmt: skip
    with pytest.raises(ConfigError) as e:
        check_federation(cfg)
    assert "\n" not in str(e.value) and "the data gives 4 clients" in str(e.value)


@pytest.mark.parametrize("overrides, says", [
    (["federated.clients_per_round=10", "federated.fraction_train=0.5"], "set one"),
    (["federated.clients_per_round=1", "federated.min_clients=2"], "below"),
    (["federated.clients_per_round=0"], ">= 1"),
])  # fmt: skip
def test_clients_per_round_config_errors(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, overrides)


def test_sample_size_is_clients_per_round():
    cfg = load_config(None, ["federated.clients_per_round=10"])
    assert sample_size(1000, cfg) == 10 and sample_size(7, cfg) == 7
    assert sample_size(1000, load_config(None, ["federated.fraction_train=0.1"])) == 100


# ---- a stage's set-up touches only the sampled nodes ----------------------------------------------


class CountingGrid(Grid):
    """``population`` nodes answering the setup query from a table (windows per node per stage); counts every
    message it is handed, by type and destination."""

    def __init__(self, windows_by_stage: dict[int, list[int]], first_id: int = 1000):
        self.windows, self.first_id = windows_by_stage, first_id
        self.nodes = [first_id + i for i in range(len(windows_by_stage[0]))]
        self.sent: Counter = Counter()
        self.to: Counter = Counter()
        self.replies: dict[str, Message] = {}

    def set_run(self, run):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *_, **__):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            self.sent[m.metadata.message_type] += 1
            self.to[m.metadata.dst_node_id] += 1
            m.metadata.__dict__["_message_id"] = f"m{sum(self.sent.values())}-{time.monotonic_ns()}"
            i = m.metadata.dst_node_id - self.first_id
            stage = int(m.content["config"]["stage"])
            n = self.windows[stage][i]
            content = RecordDict({"client": ConfigRecord({"name": f"user-{i:04d}" if n else f"node-{i}"}),
                                  "metrics": MetricRecord({"num-examples": n})})  # fmt: skip
            self.replies[m.metadata.message_id] = Message(content, reply_to=m)
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture(autouse=True)
def _server_task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for field, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, field, value)


def _membership(tmp_path, grid, *overrides):
    from fedhar.federated.server import ServerJob
    from fedhar.results.run import RunDir

    cfg = load_config(None, ["data.normalize=false", f"output_dir={tmp_path}", *overrides])
    job = ServerJob(cfg, RunDir.create(cfg, kind="simulate"), expected_nodes=len(grid.nodes), progress=False,
                    poll_interval_s=0.0)  # fmt: skip
    model = SimpleNamespace(data=SimpleNamespace(normalizer=Normalizer.identity(6)))
    return Membership(grid, job, model, lambda _: None)


POPULATION, K = 400, 10


def _stages(seed=0):
    rng = np.random.default_rng(seed)
    stage0 = rng.integers(5, 40, POPULATION).tolist()
    stage1 = [0 if i % 4 == 0 else n for i, n in enumerate(rng.integers(5, 40, POPULATION).tolist())]  # 1 in 4 sit out
    return {0: stage0, 1: stage1}


def test_a_later_stage_asks_only_the_nodes_its_rounds_sample(tmp_path):
    grid = CountingGrid(_stages())
    members = _membership(tmp_path, grid, f"federated.clients_per_round={K}")
    members.describe(0, 1, fit=False)  # the run's set-up: every node, once
    assert grid.sent[MESSAGE_DESCRIBE] == POPULATION and len(members.federation.clients) == POPULATION
    for rnd in (1, 2):
        members.refresh(rnd)
        chosen = members.sample(rnd)
        assert len(chosen) == K and len({c.name for c in chosen}) == K
    assert grid.sent[MESSAGE_DESCRIBE] == POPULATION  # sampling at the described stage asks nobody
    members.describe(1, 3, fit=False)  # a stage change
    assert grid.sent[MESSAGE_DESCRIBE] == POPULATION  # ... asks nobody yet
    asked = []
    for rnd in (3, 4, 5):
        before = grid.sent[MESSAGE_DESCRIBE]
        members.refresh(rnd)
        chosen = members.sample(rnd)
        asked.append(grid.sent[MESSAGE_DESCRIBE] - before)
        assert len(chosen) == K
        assert all(_stages()[1][c.node_id - 1000] > 0 for c in chosen)  # only clients holding data at stage 1
        assert all(c.num_examples == _stages()[1][c.node_id - 1000] for c in chosen)  # described at stage 1
    assert all(n <= 2 * K for n in asked), asked  # k, plus the draws that held nothing (1 in 4 here)
    assert sum(asked) <= 3 * 2 * K and max(grid.to.values()) <= 2  # nobody asked twice at a stage
    assert members.queries == grid.sent[MESSAGE_DESCRIBE]


def test_the_draw_is_seeded_by_round_and_by_the_names_not_the_node_ids(tmp_path):
    a, b = CountingGrid(_stages()), CountingGrid(_stages(), first_id=5000)  # another engine's ids, same users

    def draw(grid, folder):
        members = _membership(folder, grid, f"federated.clients_per_round={K}")
        members.describe(0, 1, fit=False)
        members.refresh(1)
        return [c.name for c in members.sample(1)], [c.name for c in members.sample(2)]

    first, other = draw(a, tmp_path / "a"), draw(b, tmp_path / "b")
    assert first == other and first[0] != first[1]


def test_without_clients_per_round_every_stage_asks_every_node(tmp_path):
    grid = CountingGrid(_stages())
    members = _membership(tmp_path, grid, "federated.fraction_train=0.025")
    members.describe(0, 1, fit=False)
    members.describe(1, 3, fit=False)
    assert grid.sent[MESSAGE_DESCRIBE] == 2 * POPULATION  # fraction_train: a fraction of every node holding data
    members.refresh(3)
    assert len(members.sample(3)) == 7  # 2.5 % of the 300 holding data at stage 1


def test_a_continual_run_with_clients_per_round_describes_a_later_stage_per_sampled_node(tmp_path):
    """The round loop end to end (in-process, 4 users over two stages, 2 per round): the set-up asks each node
    once, the second stage only the nodes its rounds draw, each at most once; every round trains 2 clients."""
    import json

    from fedhar.federated import aggregation
    from fedhar.federated.server import ServerJob, run_federation
    from fedhar.federated.transport import LocalGrid
    from fedhar.results.run import RunDir
    from tests.continual.test_schedule import STAGES, TWO_DOMAINS

    class Counting(LocalGrid):
        def __init__(self, n):
            super().__init__(n)
            self.asked: list[tuple[int, int]] = []  # (stage, node) of every setup query

        def handle(self, message):
            if message.metadata.message_type == MESSAGE_DESCRIBE:
                self.asked.append((int(message.content["config"]["stage"]), message.metadata.dst_node_id))
            return super().handle(message)

    cfg = aggregation.check_strategy(load_config(None, [*TWO_DOMAINS, STAGES, f"output_dir={tmp_path}", "name=k2",
                                                        "federated.clients_per_round=2"]))  # fmt: skip
    grid = Counting(4)
    run_federation(grid, ServerJob(cfg, RunDir.create(cfg, kind="simulate"), expected_nodes=4, progress=False,
                                   simulated=True))  # fmt: skip
    at = Counter(stage for stage, _ in grid.asked)
    assert at[0] == 4 and 2 <= at[1] <= 4 and len(set(grid.asked)) == len(grid.asked)  # nobody twice at a stage
    rows = json.loads((tmp_path / "k2" / "rounds.json").read_text())
    assert [r["clients_sampled"] for r in rows["rounds"]] == [2] * 5
    later = {c["client"] for c in rows["clients"] if c["round"] > 2}
    assert later <= {"subject-2", "subject-3", "subject-4"}  # subject 1 takes no part in the second stage
