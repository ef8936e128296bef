"""Aggregation of a round's checked client updates by Flower's own strategy objects.

``federated.strategy`` names a ``flwr.serverapp.strategy`` class (FedAvg, FedAvgM, FedProx, FedAdagrad,
FedAdam, FedYogi, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, QFedAvg) or one of fedhar's LoRA rules,
which are subclasses of Flower's FedAvg (``ffa-lora``, ``lora-exact``); ``federated.strategy_args`` are
that class's keyword arguments, checked against its signature. ``federated.dp`` wraps the strategy in
Flower's differential-privacy wrapper (server-side fixed or adaptive clipping; Flower's RDP accountant
for fixed clipping).

What stays fedhar's (the round loop): which clients are sampled and what they are sent (``RoundJob``),
the checks every reply passes before it may reach a strategy (names, shapes, dtypes, finite values,
counts), the cap on a client's weight, the bound on an update's norm (``bound_updates``), and resume:
a strategy's server-side state (FedAdam's / FedYogi's moments ``m_t``, ``v_t``, FedAvgM's momentum,
the adaptive clipping norm, the privacy accountant) is saved with every round's checkpoint.

* ``ffa-lora``: A stays at the shared seeded init and never travels (Sun et al. 2024), so the mean of
  the B factors *is* the mean of the products B·A.
* ``lora-exact``: per LoRA layer the mean of the products s·B·A (s = alpha / r), re-factored by a
  truncated SVD to rank r: B = U_r S_r / s, A = V_rᵀ; every other tensor by FedAvg's weighted mean.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import flwr.serverapp.strategy as flower
import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedhar.config import ExperimentConfig, check_olora
from fedhar.errors import ConfigError, FedharError

State = dict[str, np.ndarray]
LORA_A, LORA_B = ".lora_A.", ".lora_B."


class FfaLora(FedAvg):
    """FFA-LoRA (Sun et al. 2024): FedAvg on a model whose LoRA A factors are frozen at the shared seeded
    init (``model.lora.freeze_a``), so averaging B averages the products B·A exactly."""


class LoraExact(FedAvg):
    """FedAvg, except that each LoRA layer gets the weighted mean of the clients' products s·B·A, re-factored
    to rank r by a truncated SVD (``lora_svd_residual``: the relative part the rank cut)."""

    def __init__(self, *, rank: int, scaling: float, **kwargs):
        super().__init__(**kwargs)
        self.rank, self.scaling = rank, scaling
        self.diagnostics: dict[str, float] = {}

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        states = [{k: v.numpy() for k, v in r.content["arrays"].items()} for r in replies]
        weights = np.asarray([float(r.content["metrics"][self.weighted_by_key]) for r in replies])
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        pairs = lora_pairs(list(states[0]))
        if not pairs:
            raise ConfigError("strategy lora-exact needs trainable LoRA A and B factors (model.finetune: lora, "
                              "model.lora.freeze_a: false)")  # fmt: skip
        new = {k: v.numpy() for k, v in arrays.items()}
        residuals = []
        for a_name, b_name in pairs:
            mean = exact_lora_mean(states, weights, a_name, b_name, self.scaling)
            a, b, residual = refactor(mean, self.rank, self.scaling)
            new[a_name], new[b_name] = a.astype(states[0][a_name].dtype), b.astype(states[0][b_name].dtype)
            residuals.append(residual)
        self.diagnostics = {"lora_svd_residual": float(np.mean(residuals))}
        return ArrayRecord({k: Array(np.ascontiguousarray(new[k])) for k in states[0]}), metrics


#: ``federated.strategy`` → the class that aggregates (Flower's, or fedhar's subclass of Flower's FedAvg)
STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": flower.FedAvg, "fedavgm": flower.FedAvgM, "fedprox": flower.FedProx,
    "fedadagrad": flower.FedAdagrad, "fedadam": flower.FedAdam, "fedyogi": flower.FedYogi,
    "fedmedian": flower.FedMedian, "fedtrimmedavg": flower.FedTrimmedAvg,
    "krum": flower.Krum, "multikrum": flower.MultiKrum, "bulyan": flower.Bulyan, "qfedavg": flower.QFedAvg,
    "ffa-lora": FfaLora, "lora-exact": LoraExact,
}  # fmt: skip
#: constructor arguments the round loop sets itself: it samples the clients and sends the messages
ROUND_LOOP_ARGS = {
    "fraction_train": "federated.fraction_train", "fraction_evaluate": "federated.client_val_fraction",
    "min_train_nodes": "federated.min_clients", "min_evaluate_nodes": "federated.min_clients",
    "min_available_nodes": "federated.min_clients", "weighted_by_key": "the round loop (num-examples)",
    "arrayrecord_key": "the round loop", "configrecord_key": "the round loop",
    "train_metrics_aggr_fn": "the round loop", "evaluate_metrics_aggr_fn": "the round loop",
    "rank": "model.lora.r", "scaling": "model.lora.alpha / model.lora.r", "train_loss_key": "the round loop",
}  # fmt: skip
#: server-side state worth saving between rounds (dicts of arrays, lists of arrays, numbers)
STATE_ATTRIBUTES = ("m_t", "v_t", "momentum_vector", "clipping_norm")


def strategy_arguments(cfg: ExperimentConfig) -> dict:
    """The keyword arguments the configured strategy is built with: ``strategy_args`` checked against its
    constructor, plus what fedhar sets (one message per sampled client, weights by ``num-examples``)."""
    fed = cfg.federated
    if fed.strategy not in STRATEGIES:
        raise ConfigError(f"federated.strategy `{fed.strategy}` is not one of {sorted(STRATEGIES)}")
    cls = STRATEGIES[fed.strategy]
    known = _keyword_parameters(cls)
    for key in fed.strategy_args:
        if key in ROUND_LOOP_ARGS:
            raise ConfigError(f"federated.strategy_args.{key} is set by {ROUND_LOOP_ARGS[key]}, not here")
        if key not in known:
            free = sorted(k for k in known if k not in ROUND_LOOP_ARGS)
            raise ConfigError(f"federated.strategy_args.{key}: {cls.__name__} has no such argument; it takes "
                              f"{free or 'none'}")  # fmt: skip
    args = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1, "min_evaluate_nodes": 1,
            "min_available_nodes": 1, **fed.strategy_args}  # fmt: skip
    if cls is LoraExact:
        args.update(rank=cfg.model.lora.r, scaling=cfg.model.lora.alpha / cfg.model.lora.r)
    if cls is flower.QFedAvg:
        args.setdefault("client_learning_rate", cfg.train.lr)  # q-FFL's Lipschitz estimate 1/lr
    return args


def _keyword_parameters(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters
            names |= {n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD}
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                break
    return names


def check_strategy(cfg: ExperimentConfig, num_sampled: int | None = None) -> ExperimentConfig:
    """Every strategy setting that cannot work, as one line before round 1; FFA-LoRA switches
    ``model.lora.freeze_a`` on. ``num_sampled``: the clients sampled per round, where known already."""
    fed, model = cfg.federated, cfg.model
    lora = model.kind == "llm" and model.finetune == "lora"
    if fed.strategy in ("ffa-lora", "lora-exact") and not lora:
        raise ConfigError(f"federated.strategy={fed.strategy} needs a LoRA model (model.kind: llm, model.finetune: "
                          f"lora), got kind={model.kind}, finetune={model.finetune}")  # fmt: skip
    if fed.strategy == "lora-exact" and model.lora.freeze_a:
        raise ConfigError("federated.strategy=lora-exact averages B·A, so A must train: set model.lora.freeze_a=false "
                          "(or use strategy ffa-lora)")  # fmt: skip
    if fed.strategy == "ffa-lora":
        model.lora.freeze_a = True
    if cfg.continual is not None and cfg.continual.method == "olora":
        check_olora(model)  # again: ffa-lora has just frozen A
    try:
        build_strategy(cfg, num_sampled or max(fed.min_clients, 1))
    except (TypeError, ValueError) as e:  # the class's own check of its arguments
        raise ConfigError(f"federated.strategy={fed.strategy} with strategy_args {fed.strategy_args}: {e}") from None
    if num_sampled is not None:
        check_sample_size(cfg, num_sampled)
    return cfg


def check_sample_size(cfg: ExperimentConfig, n: int) -> None:
    """Robust rules need enough updates for the malicious ones they assume: Krum n >= 2f+3, Bulyan n >= 4f+3,
    MultiKrum also selects at most n - f; FedTrimmedAvg must keep at least one update."""
    fed = cfg.federated
    f = int(fed.strategy_args.get("num_malicious_nodes", 0))
    need = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(fed.strategy)
    if need is not None and n < need:
        rule = "4f+3" if fed.strategy == "bulyan" else "2f+3"
        raise ConfigError(f"federated.strategy={fed.strategy} with num_malicious_nodes={f} needs at least {need} "
                          f"updates per round ({rule}), but a round samples {n} clients: lower "
                          "strategy_args.num_malicious_nodes or sample more clients")  # fmt: skip
    select = int(fed.strategy_args.get("num_nodes_to_select", 1))
    if fed.strategy == "multikrum" and not 1 <= select <= n - f:
        raise ConfigError(f"federated.strategy_args.num_nodes_to_select={select} must be in 1..{n - f} "
                          f"(the {n} sampled clients less num_malicious_nodes={f})")  # fmt: skip
    if fed.strategy == "fedtrimmedavg":
        beta = float(fed.strategy_args.get("beta", 0.2))
        if n - 2 * int(beta * n) < 1:
            raise ConfigError(f"federated.strategy_args.beta={beta} trims every one of the {n} updates")
    if fed.dp is not None and n < 1:
        raise ConfigError("federated.dp needs at least one sampled client per round")


def build_strategy(cfg: ExperimentConfig, num_sampled: int) -> Strategy:
    """The configured strategy object, wrapped in Flower's DP wrapper when ``federated.dp`` is set."""
    strategy = STRATEGIES[cfg.federated.strategy](**strategy_arguments(cfg))
    dp = cfg.federated.dp
    if dp is None:
        return strategy
    client = dp.side == "client"
    if dp.clipping == "fixed":
        accountant = None
        if dp.delta is not None:
            from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

            # no amplification by sampling: the bound holds however the clients are drawn (a conservative ε)
            accountant = RdpAccountant(PrivacyConfig(
                target_delta=dp.delta, population_size=num_sampled,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=dp.max_epsilon,
            ))  # fmt: skip
        wrapper = flower.DifferentialPrivacyClientSideFixedClipping if client else \
            flower.DifferentialPrivacyServerSideFixedClipping  # fmt: skip
        return wrapper(strategy, dp.noise_multiplier, dp.clipping_norm, num_sampled, accountant=accountant)
    wrapper = flower.DifferentialPrivacyClientSideAdaptiveClipping if client else \
        flower.DifferentialPrivacyServerSideAdaptiveClipping  # fmt: skip
    return wrapper(strategy, dp.noise_multiplier, num_sampled, initial_clipping_norm=dp.clipping_norm,
                   target_clipped_quantile=dp.target_clipped_quantile, clip_norm_lr=dp.clip_norm_lr)


def layers(strategy: Strategy) -> list[Strategy]:
    """The strategy and the ones it wraps (a DP wrapper around FedAvg: [wrapper, FedAvg])."""
    out = [strategy]
    while isinstance(getattr(out[-1], "strategy", None), Strategy):
        out.append(out[-1].strategy)
    return out


# ---- aggregation ---------------------------------------------------------------------------------


@dataclass
class ClientUpdate:
    """One client's checked reply: its trained state, its aggregation weight and its other metrics."""

    name: str
    state: State
    num_examples: int
    metrics: dict[str, float] | None = None


class SampledGrid(Grid):
    """The nodes the round loop sampled, as a Grid: a strategy's ``configure_train`` "samples" all of them and
    builds their messages (the round loop sends them itself, with a timeout, and checks every reply)."""

    def __init__(self, node_ids: list[int]):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)

    def _not_here(self, *_, **__):
        raise NotImplementedError("the round loop sends the messages itself")

    set_run = create_message = push_messages = pull_messages = send_and_receive = _not_here
    run = property(_not_here)


def configure(strategy: Strategy, rnd: int, global_state: State, node_ids: list[int]) -> tuple[ArrayRecord, dict]:
    """Run the strategy's ``configure_train`` for the sampled nodes: it records what it needs (the arrays
    sent, for FedAdam / FedYogi / FedAvgM / QFedAvg and the DP wrappers; the round's privacy event, which
    raises ``PrivacyBudgetExhausted`` past ``federated.dp.max_epsilon``) and adds its keys to the config
    (FedProx's ``proximal-mu``). Returns the arrays record to send and those config keys."""
    from flwr.app import ConfigRecord

    from fedhar.federated.records import state_to_record

    arrays, config = state_to_record(global_state), ConfigRecord()
    messages = list(strategy.configure_train(rnd, arrays, config, SampledGrid(node_ids)))
    if sorted(m.metadata.dst_node_id for m in messages) != sorted(node_ids):
        raise FedharError(f"strategy {type(strategy).__name__} configured {len(messages)} of the {len(node_ids)} "
                          "sampled clients")  # fmt: skip
    return arrays, dict(config)


def aggregate(strategy: Strategy, rnd: int, global_state: State, updates: list[ClientUpdate],
              seed: int = 0) -> tuple[State | None, dict[str, float]]:  # fmt: skip
    """The next global state from ``updates`` by ``strategy`` (None: the strategy declined to aggregate, e.g.
    a DP round with fewer replies than it accounts for), and the strategy's diagnostics."""
    from fedhar.federated.records import state_to_record

    replies = []
    for u in sorted(updates, key=lambda u: u.name):  # a fixed order: sums must not depend on arrival
        # tensors in the global state's order: Flower's DP wrappers pair reply and global arrays by position
        u = ClientUpdate(u.name, {k: u.state[k] for k in global_state if k in u.state}, u.num_examples, u.metrics)
        # the client's own (checked) metrics travel on: QFedAvg reads train_loss, client-side adaptive DP its norm bit
        metrics = {**(u.metrics or {}), "num-examples": float(u.num_examples)}
        replies.append(Message(RecordDict({"arrays": state_to_record(u.state), "metrics": MetricRecord(metrics)}),
                               dst_node_id=0, message_type="train"))  # fmt: skip
    # Flower's DP noise draws from numpy's global generator: seeded per round, a run is reproducible
    np.random.seed(np.random.SeedSequence([seed, rnd, 7]).generate_state(1)[0])
    arrays, _ = strategy.aggregate_train(rnd, replies)
    diagnostics = dict(getattr(layers(strategy)[-1], "diagnostics", {}))
    dp = next((layer for layer in layers(strategy) if hasattr(layer, "noise_multiplier")), None)
    if dp is not None:
        diagnostics["dp_clipping_norm"] = float(dp.clipping_norm)
    if arrays is None:
        return None, diagnostics
    new = {k: np.asarray(v.numpy()).astype(global_state[k].dtype) for k, v in arrays.items()}
    if set(new) != set(global_state):
        raise FedharError(f"strategy {type(strategy).__name__} returned tensors {sorted(set(new) ^ set(global_state))} "
                          "that differ from the model's")  # fmt: skip
    return {k: new[k] for k in global_state}, diagnostics


def privacy_spent(strategy: Strategy) -> dict | None:
    """ε spent so far at the configured δ (Flower's RDP accountant), or None where nothing is accounted."""
    for layer in layers(strategy):
        if getattr(layer, "accountant", None) is not None:
            spent = layer.accountant.get_privacy_spent()
            return {"epsilon": float(spent.epsilon), "delta": float(spent.delta), "releases": int(spent.num_releases)}
    return None


# ---- server state for --resume -------------------------------------------------------------------


def server_state(strategy: Strategy) -> tuple[State, dict]:
    """(arrays, JSON) of every layer's server-side state: optimiser moments, momentum, clipping norm,
    the privacy accountant."""
    arrays: State = {}
    extra: dict = {}
    for depth, layer in enumerate(layers(strategy)):
        for attr in STATE_ATTRIBUTES:
            value = getattr(layer, attr, None)
            if isinstance(value, dict):
                arrays.update({f"{depth}/{attr}/{k}": np.asarray(v) for k, v in value.items()})
            elif isinstance(value, list):
                arrays.update({f"{depth}/{attr}/{i:05d}": np.asarray(v) for i, v in enumerate(value)})
            elif isinstance(value, float | int) and not isinstance(value, bool):
                extra[f"{depth}/{attr}"] = float(value)
        if getattr(layer, "accountant", None) is not None:
            extra[f"{depth}/accountant"] = layer.accountant.state_dict()
    return arrays, extra


def load_server_state(strategy: Strategy, arrays: State, extra: dict) -> None:
    """Put back what ``server_state`` saved; a checkpoint of another strategy is refused."""
    expected = {key.split("/")[1] for key in arrays} | {key.split("/")[1] for key in extra}
    present = {attr for layer in layers(strategy) for attr in (*STATE_ATTRIBUTES, "accountant") if hasattr(layer, attr)}
    if expected - present:
        raise ConfigError(f"the checkpoint holds server state {sorted(expected - present)} that strategy "
                          f"{type(strategy).__name__} does not keep: resume with the strategy it was saved with")  # fmt: skip
    for depth, layer in enumerate(layers(strategy)):
        for attr in STATE_ATTRIBUTES:
            keys = sorted(k for k in arrays if k.startswith(f"{depth}/{attr}/"))
            if keys and attr == "momentum_vector":
                setattr(layer, attr, [arrays[k] for k in keys])
            elif keys:
                setattr(layer, attr, {k.split("/", 2)[2]: arrays[k] for k in keys})
            elif f"{depth}/{attr}" in extra:
                setattr(layer, attr, float(extra[f"{depth}/{attr}"]))
        if f"{depth}/accountant" in extra:
            layer.accountant.load_state_dict(json.loads(json.dumps(extra[f"{depth}/accountant"])))


# ---- update bounds -------------------------------------------------------------------------------


@dataclass
class Bounded:
    """What ``bound_updates`` did: the updates to aggregate, each update's norm, and who was clipped or left out."""

    updates: list[ClientUpdate]
    norms: dict[str, float]
    scales: dict[str, float]
    rejected: dict[str, str]


def bound_updates(global_state: State, updates: list[ClientUpdate], bound: float | None,
                  action: str = "clip") -> Bounded:  # fmt: skip
    """Bound each update's distance from the global state at ``bound`` × the round's median.

    An update passes the server's checks when it has the right tensors with finite values, yet one
    scaled ×1e6 (or zeroed, or sign-flipped and scaled) would still decide a plain average. Its delta's
    L2 norm (over all trainable tensors) is compared with ``bound`` × the round's median norm: above it
    the delta is scaled down to the bound (``clip``) or the update is left out (``reject``). The median
    is the honest clients' scale as long as most clients are honest; with two clients it is not.
    """
    deltas = [{k: u.state[k].astype(np.float64) - global_state[k].astype(np.float64) for k in u.state}
              for u in updates]  # fmt: skip
    norms = {u.name: float(np.sqrt(sum(float(np.sum(d**2)) for d in delta.values()))) for u, delta in
             zip(updates, deltas)}  # fmt: skip
    out = Bounded([], norms, {}, {})
    if bound is None or len(updates) < 2:
        out.updates = list(updates)
        return out
    limit = bound * float(np.median(list(norms.values())))
    for u, delta in zip(updates, deltas):
        norm = norms[u.name]
        if norm <= limit or norm == 0.0:
            out.updates.append(u)
            continue
        why = f"update norm {norm:.4g} exceeds {bound:g} x the round's median ({limit:.4g})"
        if action == "reject":
            out.rejected[u.name] = why
            continue
        scale = limit / norm
        state = {k: (global_state[k].astype(np.float64) + scale * d).astype(u.state[k].dtype) for k, d in delta.items()}
        out.updates.append(ClientUpdate(u.name, state, u.num_examples, u.metrics))
        out.scales[u.name] = scale
    return out


# ---- LoRA helpers --------------------------------------------------------------------------------


def lora_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(A name, B name) of every LoRA-adapted layer whose both factors are in the state."""
    present = set(names)
    return [(a, a.replace(LORA_A, LORA_B)) for a in names if LORA_A in a and a.replace(LORA_A, LORA_B) in present]


def exact_lora_mean(states: list[State], weights: np.ndarray, a_name: str, b_name: str, scaling: float) -> np.ndarray:
    """The weighted mean of the clients' low-rank updates s·B·A of one layer ([out, in])."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    mean = np.zeros((states[0][b_name].shape[0], states[0][a_name].shape[1]), dtype=np.float64)
    for wi, s in zip(w, states):
        mean += wi * scaling * (s[b_name].astype(np.float64) @ s[a_name].astype(np.float64))
    return mean


def refactor(delta: np.ndarray, rank: int, scaling: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank-``rank`` factors (A [r, in], B [out, r]) with s·B·A closest to ``delta``; and the relative residual."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    k = min(rank, len(s))
    a = np.zeros((rank, delta.shape[1]))
    b = np.zeros((delta.shape[0], rank))
    a[:k] = vt[:k]
    b[:, :k] = u[:, :k] * (s[:k] / scaling)
    total = float(np.sum(s**2))
    residual = float(np.sqrt(np.sum(s[k:] ** 2) / total)) if total > 0 else 0.0
    return a, b, residual


def product_gap(updates: list[ClientUpdate], pairs: list[tuple[str, str]], scaling: float) -> float:
    """How far plain averaging of A and B lands from the mean product:
    ‖s·B̄·Ā − mean(s·B·A)‖ / ‖mean(s·B·A)‖ over all LoRA layers (Frobenius norms)."""
    if not pairs or len(updates) < 2:
        return 0.0
    updates = sorted(updates, key=lambda u: u.name)
    states = [u.state for u in updates]
    w = np.asarray([u.num_examples for u in updates], dtype=np.float64)
    w = w / w.sum()
    num = den = 0.0
    for a_name, b_name in pairs:
        exact = exact_lora_mean(states, w, a_name, b_name, scaling)
        a_bar = sum(wi * s[a_name].astype(np.float64) for wi, s in zip(w, states))
        b_bar = sum(wi * s[b_name].astype(np.float64) for wi, s in zip(w, states))
        num += float(np.sum((scaling * b_bar @ a_bar - exact) ** 2))
        den += float(np.sum(exact**2))
    return float(np.sqrt(num / den)) if den > 0 else 0.0
