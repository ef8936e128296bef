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
from fedhar.federated import aggregation as S
from fedhar.federated.transport import LocalGrid
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
    assert job.posthoc is None
    adapter = {"name": "pair-calibration",
               "state": {"pair": ["SITTING", "STANDING"], "direction": [0.5] * 9, "typical_gap": 0.3, "min_gap": 0.7}}
    assert RoundJob.from_record(RoundJob(cfg, 3, 1, 0.004, 77, norm, adapter).to_record()).posthoc == adapter


# ---- strategies (Flower's, behind fedhar's round loop) ------------------------------------------


def _update(name: str, n: int, **tensors) -> S.ClientUpdate:
    """A checked update as the loop hands it on (its metrics: what QFedAvg reads)."""
    return S.ClientUpdate(name, {k: np.asarray(v, np.float32) for k, v in tensors.items()}, n, {"train_loss": 0.5})


def _round(strategy, glob, updates, rnd=1):
    """One round as the loop runs it: the strategy's configure_train for the sampled nodes, then aggregate."""
    S.configure(strategy, rnd, glob, list(range(len(updates))))
    return S.aggregate(strategy, rnd, glob, updates)


def _built(name: str, *overrides: str, n: int = 4):
    cfg = tiny_cfg(f"federated.strategy={name}", *overrides)
    return S.build_strategy(cfg, n)


def test_fedavg_weights_by_examples_whatever_the_reply_order():
    updates = [_update("b", 3, w=[4.0, 8.0]), _update("a", 1, w=[0.0, 0.0])]
    glob = {"w": np.zeros(2, np.float32)}
    new, _ = _round(_built("fedavg"), glob, updates)
    assert new["w"].dtype == np.float32 and np.allclose(new["w"], [3.0, 6.0])
    flipped, _ = _round(_built("fedavg"), glob, updates[::-1])
    assert np.array_equal(new["w"], flipped["w"])


def test_fedprox_aggregates_like_fedavg_and_tells_clients_its_mu():
    updates = [_update("a", 2, w=[1.0]), _update("b", 2, w=[3.0])]
    prox = _built("fedprox", "federated.strategy_args={proximal_mu: 0.5}")
    glob = {"w": np.zeros(1, np.float32)}
    _, config = S.configure(prox, 1, glob, [0, 1])
    assert config["proximal-mu"] == 0.5  # clients read it from the message (RoundJob.proximal_mu)
    assert np.allclose(S.aggregate(prox, 1, glob, updates)[0]["w"], [2.0])


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_server_optimiser_state_is_saved_and_a_resumed_run_continues_exactly(name):
    args = "federated.strategy_args={server_momentum: 0.9}" if name == "fedavgm" else \
        "federated.strategy_args={eta: 0.1}"  # fmt: skip
    x = {"w": np.array([0.0, 1.0], np.float32)}
    updates = [_update("a", 1, w=[1.0, 1.0]), _update("b", 1, w=[1.0, 3.0])]
    straight = _built(name, args)
    x1, _ = _round(straight, x, updates, 1)
    arrays, extra = S.server_state(straight)
    assert arrays, f"{name} saved no server state"
    x2, _ = _round(straight, x1, updates, 2)
    resumed = _built(name, args)
    S.load_server_state(resumed, {k: v.copy() for k, v in arrays.items()}, json.loads(json.dumps(extra)))
    assert np.array_equal(_round(resumed, x1, updates, 2)[0]["w"], x2["w"])
    fresh = _round(_built(name, args), x1, updates, 2)[0]["w"]  # without the saved moments: another step
    assert not np.allclose(fresh, x2["w"])


def test_fedadam_is_floweres_with_bias_correction():
    """Flower's FedAdam: x + eta·sqrt(1-b2^(t+1))/(1-b1^(t+1)) · m/(sqrt(v)+tau), t the round (here 1)."""
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x = {"w": np.array([0.0, 1.0], np.float32)}
    updates = [_update("a", 1, w=[1.0, 1.0]), _update("b", 1, w=[1.0, 3.0])]  # mean [1, 2]: delta [1, 1]
    new, _ = _round(_built("fedadam", f"federated.strategy_args={{eta: {eta}, beta_1: {b1}, beta_2: {b2}}}"), x,
                    updates)  # fmt: skip
    m, v = (1 - b1) * 1.0, (1 - b2) * 1.0
    corrected = eta * np.sqrt(1 - b2**2) / (1 - b1**2) * m / (np.sqrt(v) + tau)
    uncorrected = eta * m / (np.sqrt(v) + tau)  # fedhar's own FedAdam before the switch
    assert np.allclose(new["w"] - x["w"], corrected, atol=1e-6) and not np.isclose(corrected, uncorrected)


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


A_NAME, B_NAME = "m.lora_A.default.weight", "m.lora_B.default.weight"


def _weights(updates):
    return np.asarray([u.num_examples for u in updates], np.float64)


def test_exact_lora_aggregation_reproduces_the_mean_product_when_it_has_rank_r():
    rng = np.random.default_rng(1)
    updates = _lora_updates(rng)
    scaling = 16 / 2
    glob = {k: np.zeros_like(v) for k, v in updates[0].state.items()}
    strategy = S.LoraExact(rank=2, scaling=scaling)
    new, diag = _round(strategy, glob, updates)
    states = [u.state for u in updates]
    exact = S.exact_lora_mean(states, _weights(updates), A_NAME, B_NAME, scaling)
    product = scaling * new[B_NAME].astype(np.float64) @ new[A_NAME]
    assert np.allclose(product, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    assert diag["lora_svd_residual"] < 1e-4
    a = new[A_NAME].astype(np.float64)
    assert np.allclose(a @ a.T, np.eye(2), atol=1e-5)  # A keeps orthonormal rows: a scale like LoRA's own init
    heads = np.stack([u.state["head.weight"] for u in updates])
    assert np.allclose(new["head.weight"], (_weights(updates)[:, None] * heads).sum(0) / 6)  # other tensors: FedAvg
    # plain averaging of A and B misses the mean product by a wide margin on the same updates
    assert S.product_gap(updates, [(A_NAME, B_NAME)], scaling) > 0.05


def test_exact_lora_aggregation_truncates_to_the_best_rank_r_approximation():
    rng = np.random.default_rng(2)
    updates = _lora_updates(rng, share_space=False)
    glob = {k: np.zeros_like(v) for k, v in updates[0].state.items()}
    new, diag = _round(S.LoraExact(rank=2, scaling=1.0), glob, updates)
    exact = S.exact_lora_mean([u.state for u in updates], _weights(updates), A_NAME, B_NAME, 1.0)
    u, s, vt = np.linalg.svd(exact)
    best = (u[:, :2] * s[:2]) @ vt[:2]
    product = new[B_NAME].astype(np.float64) @ new[A_NAME]
    assert np.allclose(product, best, atol=1e-5)
    assert diag["lora_svd_residual"] == pytest.approx(np.sqrt((s[2:] ** 2).sum() / (s**2).sum()), rel=1e-5)


def test_exact_lora_mean_matches_an_independently_computed_weighted_product_mean():
    """Reference: sum_i (n_i / N) · s · B_i @ A_i, written out here (not via ``exact_lora_mean``)."""
    rng = np.random.default_rng(4)
    r, scaling, counts = 2, 4.0, [1, 4, 9]
    u, v = rng.standard_normal((6, r)), rng.standard_normal((r, 5))
    updates = [_update(f"c{i}", n, **{A_NAME: rng.standard_normal((r, r)) @ v, B_NAME: u @ rng.standard_normal((r, r))})
               for i, n in enumerate(counts)]  # fmt: skip
    factors = [(x.state[B_NAME].astype(np.float64), x.state[A_NAME].astype(np.float64)) for x in updates]
    reference = np.zeros((6, 5))
    for n, (b, a) in zip(counts, factors):
        reference += (n / sum(counts)) * scaling * (b @ a)
    states = [x.state for x in updates]
    assert np.allclose(S.exact_lora_mean(states, np.asarray(counts), A_NAME, B_NAME, scaling), reference, rtol=1e-12)
    unweighted = sum(scaling * (b @ a) for b, a in factors) / len(factors)
    assert not np.allclose(unweighted, reference, rtol=0.05)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedyogi", "fedmedian", "lora-exact"])
def test_aggregation_is_bit_identical_whatever_the_reply_order(name):
    rng = np.random.default_rng(5)
    updates = [S.ClientUpdate(f"c{i}", {A_NAME: rng.standard_normal((2, 16)).astype(np.float32),
                                        B_NAME: rng.standard_normal((16, 2)).astype(np.float32),
                                        "head.weight": rng.standard_normal(64).astype(np.float32)}, n)
               for i, n in enumerate([3, 7, 11, 5])]  # fmt: skip
    glob = {k: np.zeros_like(x) for k, x in updates[0].state.items()}
    outs = [_round(_built(name), glob, list(order))[0] for order in itertools.permutations(updates)]
    for out in outs[1:]:
        assert all(np.array_equal(out[k], outs[0][k]) for k in glob)


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
    mean_b = _round(S.build_strategy(cfg, 3), {"b": np.zeros((4, 2), np.float32)}, updates)[0]["b"].astype(np.float64)
    exact = sum(w * b @ a for w, b in zip(np.array([1, 2, 3]) / 6, bs))
    assert np.allclose(mean_b @ a, exact, atol=1e-5)


@pytest.mark.parametrize("name", sorted(S.STRATEGIES))
def test_every_strategy_name_builds_and_aggregates_a_round(name):
    from fedhar.config import STRATEGY_NAMES

    rng = np.random.default_rng(6)
    updates = _lora_updates(rng, clients=5)
    glob = {k: np.zeros_like(v) for k, v in updates[0].state.items()}
    args = {"krum": "{num_malicious_nodes: 1}", "multikrum": "{num_malicious_nodes: 1, num_nodes_to_select: 2}",
            "bulyan": "{num_malicious_nodes: 0}"}.get(name, "{}")  # fmt: skip
    cfg = tiny_cfg(f"federated.strategy={name}", f"federated.strategy_args={args}")
    strategy = S.build_strategy(S.check_strategy(cfg, 5), 5)
    new, _ = _round(strategy, glob, updates)
    assert set(new) == set(glob) and all(np.isfinite(v).all() and v.dtype == glob[k].dtype for k, v in new.items())
    assert not all(np.array_equal(new[k], glob[k]) for k in glob)
    assert set(STRATEGY_NAMES) == set(S.STRATEGIES)  # the config's list of names is the aggregation module's


# Bulyan needs n >= 4f+3: with five clients only f=0, which keeps every update (a plain mean): no protection
@pytest.mark.parametrize("name, moves_less", [("fedmedian", True), ("krum", True), ("multikrum", True),
                                              ("bulyan", False), ("fedtrimmedavg", True), ("fedavg", False)])
def test_one_scaled_update_of_five_moves_robust_rules_little_and_fedavg_far(name, moves_less):
    rng = np.random.default_rng(7)
    glob = {"w": np.zeros(20, np.float32)}
    honest = [_update(f"c{i}", 10, w=1.0 + 0.1 * rng.standard_normal(20)) for i in range(4)]
    attacker = _update("c9", 10, w=1e6 * (1.0 + 0.1 * rng.standard_normal(20)))
    args = {"krum": "{num_malicious_nodes: 1}", "multikrum": "{num_malicious_nodes: 1, num_nodes_to_select: 2}",
            "bulyan": "{num_malicious_nodes: 0}", "fedtrimmedavg": "{beta: 0.2}"}.get(name, "{}")  # fmt: skip
    clean, _ = _round(_built(name, f"federated.strategy_args={args}", n=4), glob, honest)
    attacked, _ = _round(_built(name, f"federated.strategy_args={args}", n=5), glob, [*honest, attacker])
    shift = float(np.linalg.norm(attacked["w"] - clean["w"]))
    assert (shift < 1.0) == moves_less, f"{name} moved by {shift:.3g}"


@pytest.mark.parametrize("overrides, message", [
    (["federated.strategy=fedadam", "federated.strategy_args={lr: 0.1}"], r"FedAdam has no such argument.*'eta'"),
    (["federated.strategy_args={fraction_train: 0.5}"], "is set by federated.fraction_train"),
    (["federated.strategy=fedtrimmedavg", "federated.strategy_args={beta: 0.7}"], r"beta"),
    (["federated.server_lr=0.1"], "moved: use federated.strategy_args.eta"),
])  # fmt: skip
def test_bad_strategy_settings_fail_before_round_one(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(*overrides)


def test_krum_needs_more_clients_than_its_assumed_attackers_allow():
    cfg = load_config(None, [*TINY_FED, "federated.strategy=krum", "federated.strategy_args={num_malicious_nodes: 1}"])
    with pytest.raises(ConfigError, match=r"needs at least 5 updates per round \(2f\+3\), but a round samples 3"):
        S.check_strategy(cfg, 3)
    S.check_strategy(cfg, 5)
    bulyan = load_config(None, [*TINY_FED, "federated.strategy=bulyan", "federated.strategy_args={num_malicious_nodes: 1}"])
    with pytest.raises(ConfigError, match=r"at least 7 updates.*4f\+3"):
        S.check_strategy(bulyan, 5)


def test_the_norm_bound_clips_or_rejects_an_outsized_update():
    glob = {"w": np.zeros(3, np.float32)}
    updates = [_update(f"c{i}", 1, w=[1.0, 0.0, 0.0]) for i in range(3)] + [_update("big", 1, w=[0.0, 100.0, 0.0])]
    clipped = S.bound_updates(glob, updates, 10.0, "clip")
    assert clipped.scales == {"big": pytest.approx(0.1)} and len(clipped.updates) == 4
    assert np.allclose(clipped.updates[-1].state["w"], [0.0, 10.0, 0.0])
    rejected = S.bound_updates(glob, updates, 10.0, "reject")
    assert list(rejected.rejected) == ["big"] and len(rejected.updates) == 3
    assert S.bound_updates(glob, updates, None).updates == updates


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


class DirectGrid(LocalGrid):
    """A Grid that hands each message straight to the ClientApp: the round loop without an engine."""


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

PAIR = "train.posthoc={name: pair-calibration, classes: [SITTING, STANDING]}"


def test_calibration_from_client_statistics_equals_the_pooled_fit():
    from fedhar.federated.data import client_data, subject_split
    from fedhar.posthoc.pair_calibration import PairCalibration, labelled_pair_statistics

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
    from fedhar.model.state import read_checkpoint, read_checkpoint_info
    from fedhar.posthoc import stored_adapter

    summary, run = _run_direct(tmp_path, "calibrated", PAIR, "federated.rounds=1")
    row = json.loads(run.file("rounds.json").read_text())["rounds"][0]
    assert set(summary["client_calibrated"]) == {"val", "test"}  # one round: the round's model is the final one
    assert row["test_calibrated_macro_f1"] == pytest.approx(summary["client_calibrated"]["test"]["macro_f1"])
    assert row["val_calibrated_accuracy"] == pytest.approx(summary["client_calibrated"]["val"]["accuracy"])
    assert set(summary["client_calibrated"]["test"]["per_subject"]) == {"5"}
    assert summary["final"]["test_calibrated_macro_f1"] == summary["client_calibrated"]["test"]["macro_f1"]
    stored = stored_adapter(read_checkpoint_info(run.file("checkpoint")))  # what `fedhar evaluate --calibrate` reuses
    assert stored is not None and stored.record() == summary["posthoc"]
    assert summary["posthoc"]["name"] == "pair-calibration"
    assert read_checkpoint(run.file("state") / "round-0001")[0]["posthoc"] == summary["posthoc"]


def test_the_server_fits_the_normaliser_and_the_calibration_from_every_client(tmp_path):
    """Through the real setup round: what the server stores equals the fits on the pooled training windows,
    so it summed every client's moments and pair statistics (not just one client's)."""
    from fedhar.federated.data import subject_split
    from fedhar.model.state import read_checkpoint
    from fedhar.posthoc.pair_calibration import PairCalibration

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
    fitted = PairCalibration.from_json(summary["posthoc"]["state"])
    assert np.allclose(fitted.direction, pooled.direction, rtol=1e-5, atol=1e-8)
    assert fitted.typical_gap == pytest.approx(pooled.typical_gap, rel=1e-5)


def test_resumed_run_keeps_the_calibration_fitted_at_setup(tmp_path):
    full, _ = _run_direct(tmp_path, "full", PAIR)
    _run_direct(tmp_path, "part", PAIR, "federated.rounds=1")
    resumed, _ = _run_direct(tmp_path, "part", PAIR, "federated.rounds=2", resume=True)
    assert resumed["posthoc"] == full["posthoc"]
    assert resumed["client_calibrated"]["test"]["macro_f1"] == full["client_calibrated"]["test"]["macro_f1"]
    finished, _ = _run_direct(tmp_path, "full", PAIR, resume=True)  # nothing left to run: scored from the state
    assert finished["client_calibrated"] == full["client_calibrated"]


def test_impossible_pair_statistics_are_rejected_at_setup(tmp_path, monkeypatch):
    from fedhar.posthoc.pair_calibration import PairCalibrationConfig

    def lying(self, ws):
        return {"count": np.array([-3.0, 5.0]), "sum": np.zeros((2, 9)), "outer": np.zeros((2, 9, 9))}

    monkeypatch.setattr(PairCalibrationConfig, "statistics", lying)
    with pytest.raises(FedharError, match=r"every client failed the setup round.*pair-calibration statistics are "
                                          r"impossible \(pair counts \[-3.0, 5.0\]"):  # fmt: skip
        _run_direct(tmp_path, "lying", PAIR, "federated.rounds=1")


def test_simulate_rejects_a_calibration_pair_the_data_lacks():
    from fedhar.federated.simulate import preflight

    with pytest.raises(ConfigError, match=r"calibration pair \['SITTING', 'FLYING'\]"):
        preflight(tiny_cfg("train.posthoc={name: pair-calibration, classes: [SITTING, FLYING]}"))


def test_round_line_shows_the_calibrated_test_score_beside_the_per_window_ones():
    from fedhar.federated.server import _progress_line
    from fedhar.posthoc.pair_calibration import PairCalibration

    adapter = PairCalibration("SITTING", "STANDING", np.ones(9), typical_gap=1.0)
    row = {"round": 3, "val_macro_f1": 0.95, "test_macro_f1": 0.94, "test_accuracy": 0.93, "bytes_total": 3.4e6,
           "round_seconds": 50.0, "clients_failed": 0, "test_calibrated_macro_f1": 0.988}  # fmt: skip
    line = _progress_line(row, 20, adapter)
    assert "test F1 0.940" in line and "calibrated 0.988" in line
    assert "calibrated" not in _progress_line(row, 20)  # no adapter in this run
    del row["test_calibrated_macro_f1"]
    assert "calibrated" not in _progress_line(row, 20, adapter)


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
        assert {"client_eval_calibrated_macro_f1", "client_eval_calibrated_accuracy"} <= set(c), c
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
