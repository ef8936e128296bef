"""Federated pieces without Ray: wire records, aggregation math, data provider, client logic, the round loop."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from fedhar.config import load_config
from fedhar.data.preprocess import Normalizer
from fedhar.errors import CheckpointError, ConfigError, FedharError
from fedhar.federated import strategies as S
from fedhar.federated.records import RoundJob, record_to_state, state_to_record

#: a tiny federation: 5 synthetic subjects (3 train clients, 1 validation, 1 test), tiny untrained backbone
TINY_FED = [
    "data.dataset=synthetic", "data.synthetic.subjects=5", "data.synthetic.seconds_per_activity=4",
    "data.split.val=[4]", "data.split.test=[5]", "data.window=64",
    "model.backbone=tiny-llama", "model.num_layers=2", "model.tokens=8", "model.conv_channels=16",
    "train.batch_size=16", "train.device=cpu", "train.lr=0.003",
    "federated.rounds=2", "federated.min_clients=2",
]  # fmt: skip


def tiny_cfg(*overrides: str):
    return S.check_strategy(load_config(None, [*TINY_FED, *overrides]))


# ---- records ------------------------------------------------------------------------------------


def test_state_record_roundtrip_keeps_names_order_dtypes_and_values():
    rng = np.random.default_rng(0)
    state = {"b.weight": rng.standard_normal((3, 4)).astype(np.float32), "a.bias": np.arange(5, dtype=np.float64)}
    back = record_to_state(state_to_record(state), {n: (a.shape, a.dtype) for n, a in state.items()})
    assert list(back) == list(state)
    for name in state:
        assert back[name].dtype == state[name].dtype and np.array_equal(back[name], state[name])


def _raw_array(value: np.ndarray, *, dtype=None, shape=None, stype="numpy.ndarray", pickle=False) -> Array:
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=pickle)
    return Array(dtype=dtype or str(value.dtype), shape=tuple(shape or value.shape), stype=stype, data=buf.getvalue())


@pytest.mark.parametrize(
    "array, message",
    [
        (_raw_array(np.array([1.0, np.nan], np.float32)), "NaN or Inf"),
        (_raw_array(np.array([1, 2], np.int64)), "only ['float16', 'float32', 'float64']"),
        (_raw_array(np.zeros(2, np.float32), stype="torch.Tensor"), "serialisation `torch.Tensor`"),
        (_raw_array(np.zeros(2, np.float32), shape=(3,)), "declares float32[3] but holds float32[2]"),
        (_raw_array(np.array([{"x": 1}], dtype=object), dtype="float32", pickle=True), "cannot be decoded"),
    ],
)
def test_bad_arrays_are_rejected_by_name(array, message):
    with pytest.raises(CheckpointError, match=r"client c: tensor w") as info:
        record_to_state(ArrayRecord({"w": array}), where="client c")
    assert message in str(info.value)


def test_state_must_match_the_model_exactly():
    expected = {"w": ((2,), np.dtype("float32")), "v": ((1,), np.dtype("float32"))}
    with pytest.raises(CheckpointError, match="missing 1 tensors"):
        record_to_state(state_to_record({"w": np.zeros(2, np.float32)}), expected)
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        record_to_state(state_to_record({"w": np.zeros(2, np.float32), "v": np.zeros(1, np.float32),
                                         "x": np.zeros(1, np.float32)}), expected)  # fmt: skip
    with pytest.raises(CheckpointError, match=r"w has shape \(3,\)"):
        record_to_state(state_to_record({"w": np.zeros(3, np.float32), "v": np.zeros(1, np.float32)}), expected)


def test_round_job_roundtrip():
    cfg = tiny_cfg("federated.strategy=fedprox")
    norm = Normalizer(np.arange(6, dtype=np.float32), np.ones(6, np.float32))
    job = RoundJob.from_record(RoundJob(cfg, 3, 1, 0.004, 77, norm).to_record())
    assert (job.round, job.stage, job.lr, job.seed) == (3, 1, 0.004, 77)
    assert job.cfg.to_dict() == cfg.to_dict() and np.array_equal(job.normalizer.mean, norm.mean)
    assert job.calibration is None
    calibration = {"pair": ["SITTING", "STANDING"], "direction": [0.5] * 9, "typical_gap": 0.3, "min_gap": 0.7}
    assert RoundJob.from_record(RoundJob(cfg, 3, 1, 0.004, 77, norm, calibration).to_record()).calibration == calibration


# ---- strategies ---------------------------------------------------------------------------------


def _update(name: str, n: int, **tensors) -> S.ClientUpdate:
    return S.ClientUpdate(name, {k: np.asarray(v, np.float32) for k, v in tensors.items()}, n)


def test_fedavg_weights_by_examples_whatever_the_reply_order():
    updates = [_update("b", 3, w=[4.0, 8.0]), _update("a", 1, w=[0.0, 0.0])]
    new, _ = S.Strategy().aggregate({"w": np.zeros(2, np.float32)}, updates)
    assert new["w"].dtype == np.float32 and np.allclose(new["w"], [3.0, 6.0])
    flipped, _ = S.Strategy().aggregate({"w": np.zeros(2, np.float32)}, updates[::-1])
    assert np.array_equal(new["w"], flipped["w"])


def test_fedprox_aggregates_like_fedavg_and_sets_the_client_term():
    updates = [_update("a", 2, w=[1.0]), _update("b", 2, w=[3.0])]
    prox = S.make_strategy(tiny_cfg("federated.strategy=fedprox", "federated.proximal_mu=0.5"))
    assert prox.proximal_mu == 0.5 and S.Strategy().proximal_mu == 0.0
    assert np.allclose(prox.aggregate({"w": np.zeros(1, np.float32)}, updates)[0]["w"], [2.0])


@pytest.mark.parametrize("kind", ["adam", "yogi"])
def test_server_optimisers_follow_reddi_et_al_and_resume_exactly(kind):
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = S.FedOpt(kind, lr, b1, b2, tau)
    x = {"w": np.array([0.0, 1.0], np.float32)}
    updates = [_update("a", 1, w=[1.0, 1.0]), _update("b", 1, w=[1.0, 3.0])]  # mean [1, 2] → Δ = [1, 1]
    x1, _ = opt.aggregate(x, updates)
    m, v = (1 - b1) * 1.0, (1 - b2) * 1.0  # both rules give v = (1-b2)Δ² from v = 0
    assert np.allclose(x1["w"], x["w"] + lr * m / (np.sqrt(v) + tau), atol=1e-6)
    saved = {k: a.copy() for k, a in opt.server_state().items()}
    x2, _ = opt.aggregate(x1, updates)
    resumed = S.FedOpt(kind, lr, b1, b2, tau)
    resumed.load_server_state(saved)
    assert np.array_equal(resumed.aggregate(x1, updates)[0]["w"], x2["w"])
    delta = np.array([1.0, 2.0]) - x1["w"].astype(np.float64)
    v2 = v * b2 + (1 - b2) * delta**2 if kind == "adam" else v - (1 - b2) * delta**2 * np.sign(v - delta**2)
    assert np.allclose(opt.v["w"], v2)


def _lora_updates(rng, out=6, inp=5, r=2, share_space=True, clients=3):
    """Client LoRA factors; with ``share_space`` every product lies in one rank-r row and column space."""
    u, v = rng.standard_normal((out, r)), rng.standard_normal((r, inp))
    updates = []
    for i in range(clients):
        if share_space:
            b, a = u @ rng.standard_normal((r, r)), rng.standard_normal((r, r)) @ v
        else:
            b, a = rng.standard_normal((out, r)), rng.standard_normal((r, inp))
        updates.append(_update(f"c{i}", i + 1, **{"m.lora_A.default.weight": a, "m.lora_B.default.weight": b,
                                                  "head.weight": rng.standard_normal(3)}))  # fmt: skip
    return updates


def test_exact_lora_aggregation_reproduces_the_mean_product_when_it_has_rank_r():
    rng = np.random.default_rng(1)
    updates = _lora_updates(rng)
    scaling = 16 / 2
    glob = {k: np.zeros_like(v) for k, v in updates[0].state.items()}
    new, diag = S.LoraExact(rank=2, scaling=scaling).aggregate(glob, updates)
    exact = S.exact_lora_mean(updates, "m.lora_A.default.weight", "m.lora_B.default.weight", scaling)
    product = scaling * new["m.lora_B.default.weight"].astype(np.float64) @ new["m.lora_A.default.weight"]
    assert np.allclose(product, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    assert diag["lora_svd_residual"] < 1e-4
    a = new["m.lora_A.default.weight"].astype(np.float64)
    assert np.allclose(a @ a.T, np.eye(2), atol=1e-5)  # A keeps orthonormal rows: a scale like LoRA's own init
    assert np.allclose(new["head.weight"], S.weighted_average(updates)["head.weight"])  # other tensors: FedAvg
    # plain averaging of A and B misses the mean product by a wide margin on the same updates
    assert S.product_gap(updates, [("m.lora_A.default.weight", "m.lora_B.default.weight")], scaling) > 0.05


def test_exact_lora_aggregation_truncates_to_the_best_rank_r_approximation():
    rng = np.random.default_rng(2)
    updates = _lora_updates(rng, share_space=False)
    glob = {k: np.zeros_like(v) for k, v in updates[0].state.items()}
    new, diag = S.LoraExact(rank=2, scaling=1.0).aggregate(glob, updates)
    exact = S.exact_lora_mean(updates, "m.lora_A.default.weight", "m.lora_B.default.weight", 1.0)
    u, s, vt = np.linalg.svd(exact)
    best = (u[:, :2] * s[:2]) @ vt[:2]
    product = new["m.lora_B.default.weight"].astype(np.float64) @ new["m.lora_A.default.weight"]
    assert np.allclose(product, best, atol=1e-5)
    assert diag["lora_svd_residual"] == pytest.approx(np.sqrt((s[2:] ** 2).sum() / (s**2).sum()), rel=1e-6)


#: the aggregator each ``federated.strategy`` name must build, and the name it reports
STRATEGY_CLASSES = {"fedavg": (S.Strategy, "fedavg"), "fedprox": (S.FedProx, "fedprox"),
                    "fedadam": (S.FedOpt, "fedadam"), "fedyogi": (S.FedOpt, "fedyogi"),
                    "ffa-lora": (S.Strategy, "fedavg"), "lora-exact": (S.LoraExact, "lora-exact")}  # fmt: skip


@pytest.mark.parametrize("name", list(STRATEGY_CLASSES))
def test_each_strategy_name_builds_its_own_aggregator_with_the_configured_settings(name):
    cfg = tiny_cfg(f"federated.strategy={name}", "federated.proximal_mu=0.3", "federated.server_lr=0.05",
                   "federated.server_beta1=0.8", "federated.server_beta2=0.95", "federated.server_tau=0.002",
                   "model.lora.r=4", "model.lora.alpha=12")  # fmt: skip
    strategy = S.make_strategy(cfg)
    cls, built_as = STRATEGY_CLASSES[name]
    assert type(strategy) is cls and strategy.name == built_as
    assert strategy.proximal_mu == (0.3 if name == "fedprox" else 0.0)
    if cls is S.FedOpt:
        assert strategy.kind == name[3:]
        assert (strategy.lr, strategy.beta1, strategy.beta2, strategy.tau) == (0.05, 0.8, 0.95, 0.002)
    if cls is S.LoraExact:
        assert (strategy.rank, strategy.scaling) == (4, 3.0)
    assert set(STRATEGY_CLASSES) == set(S.STRATEGIES)  # a new strategy name needs a row above


def test_exact_lora_aggregation_matches_an_independently_computed_weighted_product_mean():
    """Reference: sum_i (n_i / N) · s · B_i @ A_i, written out here (not via ``exact_lora_mean``)."""
    rng = np.random.default_rng(4)
    a_name, b_name, r, scaling, counts = "m.lora_A.default.weight", "m.lora_B.default.weight", 2, 4.0, [1, 4, 9]
    u, v = rng.standard_normal((6, r)), rng.standard_normal((r, 5))  # one shared rank-r space: exact at rank r
    updates = [_update(f"c{i}", n, **{a_name: rng.standard_normal((r, r)) @ v, b_name: u @ rng.standard_normal((r, r))})
               for i, n in enumerate(counts)]  # fmt: skip
    factors = [(x.state[b_name].astype(np.float64), x.state[a_name].astype(np.float64)) for x in updates]
    reference = np.zeros((6, 5))
    for n, (b, a) in zip(counts, factors):
        reference += (n / sum(counts)) * scaling * (b @ a)
    assert np.allclose(S.exact_lora_mean(updates, a_name, b_name, scaling), reference, rtol=1e-12, atol=1e-12)
    glob = {k: np.zeros_like(x) for k, x in updates[0].state.items()}
    new, diag = S.LoraExact(rank=r, scaling=scaling).aggregate(glob, updates)
    product = scaling * new[b_name].astype(np.float64) @ new[a_name].astype(np.float64)
    tol = 1e-5 * np.abs(reference).max()
    assert np.allclose(product, reference, rtol=1e-5, atol=tol) and diag["lora_svd_residual"] < 1e-5
    # unequal counts: an unweighted mean would land far from the reference
    unweighted = sum(scaling * (b @ a) for b, a in factors) / len(factors)
    assert not np.allclose(unweighted, reference, rtol=0.05)


@pytest.mark.parametrize("make", [
    S.Strategy, lambda: S.FedProx(0.1), lambda: S.FedOpt("yogi", 0.1, 0.9, 0.99, 1e-3), lambda: S.LoraExact(2, 2.0),
], ids=["fedavg", "fedprox", "fedyogi", "lora-exact"])  # fmt: skip
def test_aggregation_is_bit_identical_whatever_the_reply_order(make):
    """float64 sums depend on their order in the last bits: only a fixed order makes all 24 orders agree."""
    rng = np.random.default_rng(5)
    updates = [S.ClientUpdate(f"c{i}", {"m.lora_A.default.weight": rng.standard_normal((2, 16)),
                                        "m.lora_B.default.weight": rng.standard_normal((16, 2)),
                                        "head.weight": rng.standard_normal(64)}, n)
               for i, n in enumerate([3, 7, 11, 5])]  # fmt: skip
    glob = {k: np.zeros_like(x) for k, x in updates[0].state.items()}
    outs = [make().aggregate(glob, list(order))[0] for order in itertools.permutations(updates)]
    assert len(outs) == 24
    for out in outs[1:]:
        assert all(out[k].dtype == np.float64 and np.array_equal(out[k], outs[0][k]) for k in glob)


def test_ffa_lora_freezes_a_so_plain_averaging_of_b_is_exact():
    cfg = tiny_cfg("federated.strategy=ffa-lora")
    assert cfg.model.lora.freeze_a
    from fedhar.federated.data import subject_split
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import get_trainable_state

    _, val, _ = subject_split(cfg)
    model = build_model(cfg.model, DataSpec.from_windows(val), cfg.seed)
    names = list(get_trainable_state(model))
    assert not [n for n in names if ".lora_A." in n] and [n for n in names if ".lora_B." in n]
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 5))  # the shared, frozen A
    bs = [rng.standard_normal((4, 2)) for _ in range(3)]
    updates = [_update(f"c{i}", i + 1, b=b) for i, b in enumerate(bs)]
    mean_b = S.weighted_average(updates)["b"].astype(np.float64)
    exact = sum(w * b @ a for w, b in zip(np.array([1, 2, 3]) / 6, bs))
    assert np.allclose(mean_b @ a, exact, atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["federated.strategy=lora-exact", "model.finetune=full"], "needs a LoRA model"),
        (["federated.strategy=ffa-lora", "model.kind=deepconvlstm"], "needs a LoRA model"),
        (["federated.strategy=lora-exact", "model.lora.freeze_a=true"], "A must train"),
        (["federated.strategy=fedsgd"], "strategy must be one of"),
        (["federated.lr_schedule=step"], "lr_schedule must be exponential or cosine"),
        (["federated.cpus_per_client=0"], "cpus_per_client must be positive"),
    ],
)
def test_bad_federated_configs_fail_with_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(*overrides)


def test_too_few_clients_for_min_clients():
    from fedhar.federated.simulate import check_federation

    assert check_federation(tiny_cfg()) == ["subject-1", "subject-2", "subject-3"]
    with pytest.raises(ConfigError, match="makes 3 clients with data, fewer than federated.min_clients=5"):
        check_federation(tiny_cfg("federated.min_clients=5"))


# ---- data provider and client logic -------------------------------------------------------------


def test_client_data_partitions_the_training_subjects_only():
    from fedhar.federated.data import client_data, subject_split

    cfg = tiny_cfg()
    train, val, test = subject_split(cfg)
    parts = [client_data(cfg, {"partition-id": i}, stage=0) for i in range(3)]
    assert [p.name for p in parts] == ["subject-1", "subject-2", "subject-3"]
    assert sum(len(p.train) for p in parts) == len(train)
    assert client_data(cfg, {"partition-id": 7}, stage=0) is None  # a node with no data sits rounds out
    with pytest.raises(ConfigError, match="partition-id"):
        client_data(cfg, {}, stage=0)
    held = client_data(tiny_cfg("federated.client_val_fraction=0.25"), {"partition-id": 0}, stage=0)
    assert held.val is not None and len(held.val) + len(held.train) == len(parts[0].train)
    assert held.val.start_s.min() > held.train.where(session=held.val.session[0]).start_s.max() - 1e-9


def test_normaliser_from_client_moments_equals_the_centralised_fit():
    from fedhar.federated.client import moments
    from fedhar.federated.data import client_data, subject_split

    cfg = tiny_cfg()
    train, _, _ = subject_split(cfg)
    count, total, total_sq = 0.0, 0.0, 0.0
    for i in range(3):
        data = client_data(cfg, {"partition-id": i}, stage=0)
        m = moments(data.train)
        count += data.train.x.shape[0] * data.train.x.shape[2]
        total, total_sq = total + m["sum"], total_sq + m["sum_sq"]
    fed, central = Normalizer.from_moments(count, total, total_sq), Normalizer.fit(train)
    assert np.allclose(fed.mean, central.mean, atol=1e-5) and np.allclose(fed.std, central.std, rtol=1e-4)


def test_client_training_moves_the_state_and_the_proximal_term_pulls_back():
    from fedhar.federated.client import process_model, proximal_term, train_client
    from fedhar.federated.data import client_data
    from fedhar.model.state import get_trainable_state

    cfg = tiny_cfg()
    data = client_data(cfg, {"partition-id": 0}, stage=0)
    model = process_model(cfg, data.train, None)
    start = get_trainable_state(model)
    assert float(proximal_term(model, start, 1.0)(model).detach()) == 0.0
    job = RoundJob(cfg, 1, 0, 0.01, 5, Normalizer.fit(data.train))
    state, metrics = train_client(job, data, start)
    assert metrics["steps"] > 0 and np.isfinite(metrics["train_loss"])
    assert any(not np.array_equal(state[n], start[n]) for n in start)
    assert process_model(cfg, data.train, None) is model  # the backbone is loaded once per process
    far = {n: a + 1.0 for n, a in start.items()}
    assert float(proximal_term(model, far, 0.5)(model).detach()) > 0


# ---- the round loop, in-process (no Ray) ----------------------------------------------------------


@pytest.fixture(autouse=True)
def _server_task_identity(monkeypatch):
    """The identity Flower gives the process that runs a ServerApp (messages are stamped with it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for field, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, field, value)


class DirectGrid(Grid):
    """A Grid that hands each message straight to the ClientApp: the round loop without an engine."""

    def __init__(self, num_nodes: int):
        from clients.app import app

        self.app = app
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, node_config={"partition-id": i},
                                          state=RecordDict(), run_config={}) for i in range(num_nodes)}  # fmt: skip
        self.replies: dict[str, Message] = {}

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.contexts)

    def handle(self, message: Message) -> Message:
        return self.app(message, self.contexts[message.metadata.dst_node_id])

    def push_messages(self, messages):
        ids = []
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"m{len(self.replies) + i}"
            self.replies[m.metadata.message_id] = self.handle(m)
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in sorted(message_ids, reverse=True)]  # replies arrive in any order

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


class ErrorReplyGrid(DirectGrid):
    """Turns client exceptions into Error replies, as Flower's engine does."""

    def handle(self, message: Message) -> Message:
        from flwr.app import Error

        try:
            return super().handle(message)
        except Exception as e:  # noqa: BLE001 - the engine reports every client exception as a reply
            return Message(Error(code=1, reason=f"ClientAppException: {e}"), reply_to=message)


def _run_direct(tmp_path, name, *overrides, resume=False, grid=None, simulated=True):
    from fedhar.federated.server import ServerJob, run_federation
    from fedhar.results.run import RunDir

    cfg = tiny_cfg(f"output_dir={tmp_path}", f"name={name}", *overrides)
    run = RunDir(tmp_path / name) if resume else RunDir.create(cfg, kind="simulate")
    job = ServerJob(cfg, run, resume=resume, expected_nodes=3, progress=False, simulated=simulated)
    return run_federation(grid or DirectGrid(3), job), run


@pytest.mark.parametrize("strategy", ["fedavg", "fedyogi"])
def test_round_loop_resume_continues_exactly(tmp_path, strategy):
    from safetensors.numpy import load_file

    from fedhar.federated.server import SERVER_STATE_FILE, STATE_DIR

    summary, run = _run_direct(tmp_path, "full", f"federated.strategy={strategy}")
    rows = json.loads(run.file("rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [1, 2] and summary["rounds_completed"] == 2
    assert rows[0]["clients_updated"] == 3 and rows[0]["bytes_up"] > 0
    _run_direct(tmp_path, "part", f"federated.strategy={strategy}", "federated.rounds=1")
    keeps_state = strategy == "fedyogi"  # the server optimiser's moments m and v
    assert (tmp_path / "part" / STATE_DIR / "round-0001" / SERVER_STATE_FILE).is_file() == keeps_state
    _run_direct(tmp_path, "part", f"federated.strategy={strategy}", "federated.rounds=2", resume=True)
    resumed = json.loads((tmp_path / "part" / "rounds.json").read_text())["rounds"]
    for key in ("val_macro_f1", "test_accuracy", "test_loss", "bytes_total"):
        assert [r[key] for r in resumed] == [r[key] for r in rows], key
    assert sorted(p.name for p in (tmp_path / "part" / STATE_DIR).iterdir()) == ["round-0002"]
    full_dir, part_dir = tmp_path / "full" / STATE_DIR / "round-0002", tmp_path / "part" / STATE_DIR / "round-0002"
    files = ["trainable.safetensors", SERVER_STATE_FILE] if keeps_state else ["trainable.safetensors"]
    assert (part_dir / SERVER_STATE_FILE).is_file() == keeps_state
    for name in files:  # the resumed run ends bit-for-bit where the uninterrupted one does
        full, part = load_file(str(full_dir / name)), load_file(str(part_dir / name))
        assert list(full) == list(part) and all(np.array_equal(full[k], part[k]) for k in full), name


def test_a_resumed_run_trains_only_the_rounds_left(tmp_path, monkeypatch):
    from fedhar.federated import client

    real, trained = client.train_client, []

    def counting(job, data, state):
        trained.append((job.round, data.name))
        return real(job, data, state)

    monkeypatch.setattr(client, "train_client", counting)
    subjects = ["subject-1", "subject-2", "subject-3"]
    _run_direct(tmp_path, "part", "federated.rounds=1")
    assert sorted(trained) == [(1, s) for s in subjects]
    trained.clear()
    summary, run = _run_direct(tmp_path, "part", "federated.rounds=2", resume=True)
    assert sorted(trained) == [(2, s) for s in subjects]  # round 1 is restored, not trained again
    assert [r["round"] for r in json.loads(run.file("rounds.json").read_text())["rounds"]] == [1, 2]
    trained.clear()
    _run_direct(tmp_path, "part", "federated.rounds=2", resume=True)  # nothing left to run
    assert trained == []


def test_round_loop_fails_clearly_when_clients_fail(tmp_path, monkeypatch):
    from fedhar.federated import client

    def broken(job, data, state):
        raise RuntimeError("disk full")

    monkeypatch.setattr(client, "train_client", broken)
    with pytest.raises(FedharError, match=r"round 1: 0 of 3 clients returned an update.*disk full"):
        _run_direct(tmp_path, "broken", "federated.rounds=1", grid=ErrorReplyGrid(3))


def test_round_loop_survives_a_failing_client_above_min_clients(tmp_path, monkeypatch):
    from fedhar.federated import client

    real = client.train_client

    def flaky(job, data, state):
        if data.name == "subject-2":
            raise RuntimeError("battery died")
        return real(job, data, state)

    monkeypatch.setattr(client, "train_client", flaky)
    _, run = _run_direct(tmp_path, "flaky", "federated.rounds=1", grid=ErrorReplyGrid(3))
    row = json.loads(run.file("rounds.json").read_text())["rounds"][0]
    assert row["clients_updated"] == 2 and row["clients_failed"] == 1 and "battery died" in row["errors"][0]


@pytest.mark.parametrize("strategy", ["ffa-lora", "lora-exact", "fedyogi"])
def test_strategies_through_the_loop_with_client_evaluation_and_a_reloadable_checkpoint(tmp_path, strategy):
    from fedhar.federated.data import subject_split
    from fedhar.model.state import load_checkpoint
    from fedhar.training.loop import evaluate

    summary, run = _run_direct(tmp_path, strategy, f"federated.strategy={strategy}", "federated.rounds=1",
                               "federated.client_val_fraction=0.25")  # fmt: skip
    data = json.loads(run.file("rounds.json").read_text())
    row, clients = data["rounds"][0], data["clients"]
    assert ("lora_svd_residual" in row) == (strategy == "lora-exact")
    assert ("lora_product_gap" in row) == (strategy != "ffa-lora")  # FFA-LoRA sends no A: nothing to mismatch
    assert len(clients) == 3 and all("client_eval_macro_f1" in c and c["eval_bytes_down"] > 0 for c in clients)
    assert row["bytes_total"] == sum(c["bytes_down"] + c["bytes_up"] + c["eval_bytes_down"] + c["eval_bytes_up"]
                                     for c in clients)  # fmt: skip
    # the checkpoint rebuilds the model (FFA-LoRA: A from the init seed) and scores as the server did
    _, _, test = subject_split(load_config(run.file("config.yaml")))
    reloaded = evaluate(load_checkpoint(run.file("checkpoint")), test)
    assert reloaded["accuracy"] == summary["final"]["test_accuracy"]
    assert reloaded["loss"] == pytest.approx(summary["final"]["test_loss"], rel=1e-5)


def test_clients_can_leave_between_rounds_through_the_data_stage(tmp_path, monkeypatch):
    """The seam continual adaptation uses: a later stage where one client holds no data any more."""
    from fedhar.federated import client, server
    from fedhar.federated.data import client_data

    def schedule(cfg, rnd):
        return rnd - 1  # round 1 → stage 0, round 2 → stage 1

    def data_at_stage(cfg, node_config, stage):
        data = client_data(cfg, node_config, stage)
        return None if stage >= 1 and data.name == "subject-3" else data

    monkeypatch.setattr(server, "stage_of_round", schedule)
    monkeypatch.setattr(client, "client_data", data_at_stage)
    _, run = _run_direct(tmp_path, "stages")
    rows = json.loads(run.file("rounds.json").read_text())["rounds"]
    assert [(r["stage"], r["clients_updated"]) for r in rows] == [(0, 3), (1, 2)]
    federation = json.loads(run.file("federation.json").read_text())
    assert federation["stage"] == 1 and [c["name"] for c in federation["clients"]] == ["subject-1", "subject-2"]


def test_local_training_keeps_the_loop_settings_but_no_weight_average():
    from fedhar.federated.client import local_train_config

    cfg = load_config(None, ["train.ema_decay=0.995", "train.augment.rotation_degrees=10", "federated.local_epochs=2"])
    local = local_train_config(cfg, lr=0.01)
    assert local.ema_decay == 0.0  # it would only damp the update a client sends
    assert local.augment.rotation_degrees == 10 and local.epochs == 2 and local.lr == 0.01


# ---- per-client calibration in a federation ----------------------------------------------------

PAIR = "train.client_calibration=[SITTING, STANDING]"


def test_calibration_from_client_statistics_equals_the_pooled_fit():
    from fedhar.calibration import PairCalibration, labelled_pair_statistics
    from fedhar.federated.data import client_data, subject_split

    cfg = tiny_cfg(PAIR)
    train, _, _ = subject_split(cfg)
    parts = [labelled_pair_statistics(client_data(cfg, {"partition-id": i}, stage=0).train, ("SITTING", "STANDING"))
             for i in range(3)]  # fmt: skip
    summed = {k: sum(p[k] for p in parts) for k in parts[0]}
    fed = PairCalibration.from_statistics(summed, ["SITTING", "STANDING"])
    pooled = PairCalibration.fit(train, ("SITTING", "STANDING"))
    assert np.allclose(fed.direction, pooled.direction, rtol=1e-6, atol=1e-9)
    assert fed.typical_gap == pytest.approx(pooled.typical_gap, rel=1e-6)


def test_round_loop_fits_the_calibration_from_clients_and_scores_each_held_out_subject(tmp_path):
    from fedhar.calibration import stored_calibration
    from fedhar.model.state import read_checkpoint

    summary, run = _run_direct(tmp_path, "calibrated", PAIR, "federated.rounds=1")
    row = json.loads(run.file("rounds.json").read_text())["rounds"][0]
    assert 0 <= row["test_calibrated_macro_f1"] <= 1 and 0 <= row["val_calibrated_accuracy"] <= 1
    assert set(summary["client_calibrated"]) == {"val", "test"}
    assert set(summary["client_calibrated"]["test"]["per_subject"]) == {"5"}
    assert summary["final"]["test_calibrated_macro_f1"] == summary["client_calibrated"]["test"]["macro_f1"]
    stored = stored_calibration(run.file("checkpoint"))  # what `fedhar evaluate --calibrate` reuses
    assert stored is not None and stored.to_json() == summary["client_calibration"]
    assert read_checkpoint(run.file("state") / "round-0001")[0]["client_calibration"] == summary["client_calibration"]


def test_the_server_fits_the_normaliser_and_the_calibration_from_every_client(tmp_path):
    """Through the real setup round: what the server stores equals the fits on the pooled training windows,
    so it summed every client's moments and pair statistics (not just one client's)."""
    from fedhar.calibration import PairCalibration
    from fedhar.federated.data import subject_split
    from fedhar.model.state import read_checkpoint

    summary, run = _run_direct(tmp_path, "pooled", PAIR, "federated.rounds=1")
    train = subject_split(tiny_cfg(PAIR))[0]
    central = Normalizer.fit(train)
    stored = {"federation.json": json.loads(run.file("federation.json").read_text())["normalizer"],
              "checkpoint": read_checkpoint(run.file("checkpoint"))[0]["data"]["normalizer"],
              "round state": read_checkpoint(run.file("state") / "round-0001")[0]["data"]["normalizer"]}  # fmt: skip
    for where, record in stored.items():
        norm = Normalizer.from_json(record)
        assert np.allclose(norm.mean, central.mean, atol=1e-5), where
        assert np.allclose(norm.std, central.std, rtol=1e-4), where
    pooled = PairCalibration.fit(train, ("SITTING", "STANDING"))
    fitted = PairCalibration.from_json(summary["client_calibration"])
    assert np.allclose(fitted.direction, pooled.direction, rtol=1e-5, atol=1e-8)
    assert fitted.typical_gap == pytest.approx(pooled.typical_gap, rel=1e-5)


def test_resumed_run_keeps_the_calibration_fitted_at_setup(tmp_path):
    full, _ = _run_direct(tmp_path, "full", PAIR)
    _run_direct(tmp_path, "part", PAIR, "federated.rounds=1")
    resumed, _ = _run_direct(tmp_path, "part", PAIR, "federated.rounds=2", resume=True)
    assert resumed["client_calibration"] == full["client_calibration"]
    assert resumed["client_calibrated"]["test"]["macro_f1"] == full["client_calibrated"]["test"]["macro_f1"]
    finished, _ = _run_direct(tmp_path, "full", PAIR, resume=True)  # nothing left to run: scored from the state
    assert finished["client_calibrated"] == full["client_calibrated"]


def test_impossible_pair_statistics_are_rejected_at_setup(tmp_path, monkeypatch):
    from fedhar.federated import client

    def lying(ws, pair):
        return {"count": np.array([-3.0, 5.0]), "sum": np.zeros((2, 9)), "outer": np.zeros((2, 9, 9))}

    monkeypatch.setattr(client, "labelled_pair_statistics", lying)
    with pytest.raises(FedharError, match=r"every client failed the setup round.*pair statistics are impossible"):
        _run_direct(tmp_path, "lying", PAIR, "federated.rounds=1")


def test_simulate_rejects_a_calibration_pair_the_data_lacks():
    from fedhar.federated.simulate import preflight

    with pytest.raises(ConfigError, match=r"calibration pair \['SITTING', 'FLYING'\]"):
        preflight(tiny_cfg("train.client_calibration=[SITTING, FLYING]"))


def test_round_line_shows_the_calibrated_test_score_beside_the_per_window_ones():
    from fedhar.federated.server import _progress_line

    row = {"round": 3, "val_macro_f1": 0.95, "test_macro_f1": 0.94, "test_accuracy": 0.93, "bytes_total": 3.4e6,
           "round_seconds": 50.0, "clients_failed": 0, "test_calibrated_macro_f1": 0.988}  # fmt: skip
    line = _progress_line(row, 20)
    assert "test F1 0.940" in line and "calibrated 0.988" in line
    del row["test_calibrated_macro_f1"]
    assert "calibrated" not in _progress_line(row, 20)


def test_clients_train_on_denser_windows_when_train_overlap_is_set():
    from fedhar.federated.data import client_data, subject_split

    plain, dense = tiny_cfg(), tiny_cfg("data.train_overlap=0.75")
    n_plain = len(client_data(plain, {"partition-id": 0}, stage=0).train)
    n_dense = len(client_data(dense, {"partition-id": 0}, stage=0).train)
    assert 1.7 * n_plain < n_dense < 2.3 * n_plain
    assert [len(p) for p in subject_split(plain)[1:]] == [len(p) for p in subject_split(dense)[1:]]


def test_clients_apply_the_calibration_to_their_local_evaluation(tmp_path):
    summary, run = _run_direct(tmp_path, "local", PAIR, "federated.rounds=1", "federated.client_val_fraction=0.5")
    clients = json.loads(run.file("rounds.json").read_text())["clients"]
    assert len(clients) == 3
    for c in clients:
        assert 0 <= c["client_eval_calibrated_macro_f1"] <= 1 and 0 <= c["client_eval_calibrated_accuracy"] <= 1
    _, plain = _run_direct(tmp_path, "plain", "federated.rounds=1", "federated.client_val_fraction=0.5")
    assert not any("calibrated" in k for c in json.loads(plain.file("rounds.json").read_text())["clients"] for k in c)


def test_checkpoints_record_training_subjects_only_when_the_server_knows_them(tmp_path):
    """A simulation's clients hold the config's training split; deployed devices hold their own recordings,
    so a deployment must not claim the server config's split (fedhar evaluate warns on those subjects)."""
    from fedhar.federated.data import subject_split

    _run_direct(tmp_path, "sim", "federated.rounds=1")
    info = json.loads((tmp_path / "sim" / "checkpoint" / "model.json").read_text())
    cfg = tiny_cfg(f"output_dir={tmp_path}", "name=sim")
    assert info["train_subjects"] == sorted(set(subject_split(cfg)[0].subject.tolist()), key=int)
    assert info["synthetic_data"] is True
    _run_direct(tmp_path, "devices", "federated.rounds=1", simulated=False)
    assert "train_subjects" not in json.loads((tmp_path / "devices" / "checkpoint" / "model.json").read_text())
