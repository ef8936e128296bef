"""Server-side aggregation of client updates: the math of every ``federated.strategy``, on plain numpy.

States are ``name → array`` dicts of trainable tensors (frontend, LoRA factors, head). The
strategies are written here rather than taken from ``flwr.serverapp.strategy`` because the
round loop needs what those classes keep private: server-optimiser moments that a resumed run
restores, exact LoRA aggregation, per-client byte counts, and clients that come and go.

* ``fedavg``: example-weighted mean (McMahan et al. 2017); on LoRA it averages A and B separately.
* ``fedprox``: the same mean; clients add ``mu/2 ||w - w_global||^2`` to their loss (Li et al. 2020).
* ``fedadam`` / ``fedyogi``: the mean's difference from the global state is a pseudo-gradient
  for a server Adam / Yogi step (Reddi et al. 2021, without bias correction).
* ``ffa-lora``: A stays at the shared seeded init and never travels (Sun et al. 2024), so the
  mean of the B factors *is* the mean of the products B·A.
* ``lora-exact``: per LoRA layer the mean of the products s·B·A (s = alpha / r), re-factored by
  a truncated SVD to rank r: B = U_r S_r / s, A = V_rᵀ (orthonormal rows, a scale close to
  LoRA's own init of A); every other tensor by the example-weighted mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedhar.config import ExperimentConfig
from fedhar.errors import ConfigError

State = dict[str, np.ndarray]

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "ffa-lora", "lora-exact")
LORA_A, LORA_B = ".lora_A.", ".lora_B."


@dataclass
class ClientUpdate:
    """One client's reply: its trained state and how many windows it trained on."""

    name: str
    state: State
    num_examples: int


def _weights(updates: list[ClientUpdate]) -> np.ndarray:
    counts = np.asarray([u.num_examples for u in updates], dtype=np.float64)
    if len(updates) == 0 or counts.sum() <= 0:
        raise ValueError("no client update with training examples to aggregate")
    return counts / counts.sum()


def weighted_average(updates: list[ClientUpdate], names: list[str] | None = None) -> State:
    """Example-weighted mean of each tensor (float64 accumulation, cast back to the tensor's dtype)."""
    weights = _weights(updates)
    names = list(updates[0].state) if names is None else names
    out: State = {}
    for name in names:
        acc = np.zeros(updates[0].state[name].shape, dtype=np.float64)
        for w, u in zip(weights, updates):
            acc += w * u.state[name]
        out[name] = acc.astype(updates[0].state[name].dtype)
    return out


def lora_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(A name, B name) of every LoRA-adapted layer whose both factors are in the state."""
    present = set(names)
    pairs = []
    for a in names:
        if LORA_A in a:
            b = a.replace(LORA_A, LORA_B)
            if b in present:
                pairs.append((a, b))
    return pairs


def exact_lora_mean(updates: list[ClientUpdate], a_name: str, b_name: str, scaling: float) -> np.ndarray:
    """The example-weighted mean of the clients' low-rank updates s·B·A of one layer ([out, in])."""
    updates = _sorted(updates)
    weights = _weights(updates)
    mean = np.zeros((updates[0].state[b_name].shape[0], updates[0].state[a_name].shape[1]), dtype=np.float64)
    for w, u in zip(weights, updates):
        mean += w * scaling * (u.state[b_name].astype(np.float64) @ u.state[a_name].astype(np.float64))
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
    """How far plain averaging of A and B lands from the mean product.

    ‖s·B̄·Ā − mean(s·B·A)‖ / ‖mean(s·B·A)‖ over all LoRA layers (Frobenius norms).
    """
    if not pairs or len(updates) < 2:
        return 0.0
    updates = _sorted(updates)
    plain = weighted_average(updates, [n for pair in pairs for n in pair])
    num = den = 0.0
    for a_name, b_name in pairs:
        exact = exact_lora_mean(updates, a_name, b_name, scaling)
        approx = scaling * plain[b_name].astype(np.float64) @ plain[a_name].astype(np.float64)
        num += float(np.sum((approx - exact) ** 2))
        den += float(np.sum(exact**2))
    return float(np.sqrt(num / den)) if den > 0 else 0.0


class Strategy:
    """Turns the global state and the round's client updates into the next global state."""

    name = "fedavg"

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> tuple[State, dict[str, float]]:
        """The new global state and diagnostics (floats) for the round record."""
        return weighted_average(_sorted(updates), list(global_state)), {}

    @property
    def proximal_mu(self) -> float:
        """Weight of the clients' proximal term (FedProx); 0 elsewhere."""
        return 0.0

    def server_state(self) -> State:
        """Server-side optimiser state, checkpointed each round so ``--resume`` continues it exactly."""
        return {}

    def load_server_state(self, state: State) -> None:
        if state:
            raise ConfigError(
                f"strategy {self.name} keeps no server state, but the checkpoint holds {len(state)} tensors"
            )


class FedProx(Strategy):
    name = "fedprox"

    def __init__(self, mu: float):
        self.mu = mu

    @property
    def proximal_mu(self) -> float:
        return self.mu


class FedOpt(Strategy):
    """FedAdam / FedYogi: a server optimiser step along the clients' mean update."""

    def __init__(self, kind: str, lr: float, beta1: float, beta2: float, tau: float):
        if kind not in ("adam", "yogi"):
            raise ValueError(f"unknown server optimiser {kind}")
        self.name = f"fed{kind}"
        self.kind, self.lr, self.beta1, self.beta2, self.tau = kind, lr, beta1, beta2, tau
        self.m: State = {}
        self.v: State = {}

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> tuple[State, dict[str, float]]:
        mean = weighted_average(_sorted(updates), list(global_state))
        new: State = {}
        for name, x in global_state.items():
            delta = mean[name].astype(np.float64) - x.astype(np.float64)
            m = self.beta1 * self.m.get(name, np.zeros_like(delta)) + (1 - self.beta1) * delta
            v = self.v.get(name, np.zeros_like(delta))
            sq = delta**2
            if self.kind == "adam":
                v = self.beta2 * v + (1 - self.beta2) * sq
            else:
                v = v - (1 - self.beta2) * sq * np.sign(v - sq)
            self.m[name], self.v[name] = m, v
            new[name] = (x + self.lr * m / (np.sqrt(v) + self.tau)).astype(x.dtype)
        return new, {}

    def server_state(self) -> State:
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()}}

    def load_server_state(self, state: State) -> None:
        self.m = {k[2:]: v for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: v for k, v in state.items() if k.startswith("v/")}


class LoraExact(Strategy):
    name = "lora-exact"

    def __init__(self, rank: int, scaling: float):
        self.rank, self.scaling = rank, scaling

    def aggregate(self, global_state: State, updates: list[ClientUpdate]) -> tuple[State, dict[str, float]]:
        updates = _sorted(updates)
        pairs = lora_pairs(list(global_state))
        if not pairs:
            raise ConfigError(
                "strategy lora-exact needs trainable LoRA A and B factors (model.finetune: lora, freeze_a: false)"
            )
        lora_names = {n for pair in pairs for n in pair}
        new = weighted_average(updates, [n for n in global_state if n not in lora_names])
        residuals = []
        for a_name, b_name in pairs:
            a, b, residual = refactor(exact_lora_mean(updates, a_name, b_name, self.scaling), self.rank, self.scaling)
            new[a_name] = a.astype(global_state[a_name].dtype)
            new[b_name] = b.astype(global_state[b_name].dtype)
            residuals.append(residual)
        return {n: new[n] for n in global_state}, {"lora_svd_residual": float(np.mean(residuals))}


def _sorted(updates: list[ClientUpdate]) -> list[ClientUpdate]:
    """A fixed summation order (replies arrive in any order) keeps rounds bit-for-bit reproducible."""
    return sorted(updates, key=lambda u: u.name)


def make_strategy(cfg: ExperimentConfig) -> Strategy:
    """The configured strategy (``check_strategy`` has already accepted the config)."""
    fed = cfg.federated
    if fed.strategy == "fedprox":
        return FedProx(fed.proximal_mu)
    if fed.strategy in ("fedadam", "fedyogi"):
        return FedOpt(fed.strategy[3:], fed.server_lr, fed.server_beta1, fed.server_beta2, fed.server_tau)
    if fed.strategy == "lora-exact":
        return LoraExact(cfg.model.lora.r, cfg.model.lora.alpha / cfg.model.lora.r)
    return Strategy()  # fedavg, ffa-lora (A is frozen, so plain averaging of B is exact)


def check_strategy(cfg: ExperimentConfig) -> ExperimentConfig:
    """Reject strategy/model combinations that cannot work; FFA-LoRA switches ``model.lora.freeze_a`` on."""
    fed, model = cfg.federated, cfg.model
    lora = model.kind == "llm" and model.finetune == "lora"
    if fed.strategy in ("ffa-lora", "lora-exact") and not lora:
        raise ConfigError(
            f"federated.strategy={fed.strategy} needs a LoRA model (model.kind: llm, model.finetune: lora), "
            f"got kind={model.kind}, finetune={model.finetune}"
        )
    if fed.strategy == "lora-exact" and model.lora.freeze_a:
        raise ConfigError("federated.strategy=lora-exact averages B·A, so A must train: set model.lora.freeze_a=false "
                          "(or use strategy ffa-lora)")  # fmt: skip
    if fed.strategy == "ffa-lora":
        model.lora.freeze_a = True
    return cfg
