"""What crosses the wire: trainable state ↔ Flower ``ArrayRecord``, job config ↔ ``ConfigRecord``.

Arrays travel as Flower's numpy serialisation (``np.save`` with ``allow_pickle=False``); the
receiving side checks every array's declared type, dtype, shape and values before anything
touches a model, so a malformed or hostile reply fails with a message naming the tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from fedhar.config import ExperimentConfig, from_dict
from fedhar.continual.regularize import FISHER_REQUEST
from fedhar.data.preprocess import Normalizer
from fedhar.errors import CheckpointError
from fedhar.model.state import check_state

#: dtypes a trainable tensor may have on the wire (the model is float32; float64 for moments)
WIRE_DTYPES = ("float16", "float32", "float64")
NUMPY_STYPE = "numpy.ndarray"

StateSpec = dict[str, tuple[tuple[int, ...], np.dtype]]


def state_to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    """A ``name → numpy`` state as an ArrayRecord (order kept, arrays made contiguous)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in state.items()})


def record_to_state(
    record: ArrayRecord, expected: StateSpec | None = None, where: str = "message"
) -> dict[str, np.ndarray]:
    """Decode and check an ArrayRecord; with ``expected``, names, shapes and dtypes must match it exactly."""
    state: dict[str, np.ndarray] = {}
    for name, arr in record.items():
        if arr.stype != NUMPY_STYPE:
            raise CheckpointError(f"{where}: tensor {name} has serialisation `{arr.stype}`, expected {NUMPY_STYPE}")
        if arr.dtype not in WIRE_DTYPES:
            raise CheckpointError(
                f"{where}: tensor {name} has dtype {arr.dtype}; only {list(WIRE_DTYPES)} are accepted"
            )
        try:
            value = arr.numpy()  # np.load(allow_pickle=False): object arrays are refused here
        except ValueError as e:
            raise CheckpointError(f"{where}: tensor {name} cannot be decoded ({e})") from e
        if str(value.dtype) != arr.dtype or tuple(value.shape) != tuple(arr.shape):
            raise CheckpointError(
                f"{where}: tensor {name} declares {arr.dtype}{list(arr.shape)} "
                f"but holds {value.dtype}{list(value.shape)}"
            )
        if not np.isfinite(value).all():
            raise CheckpointError(f"{where}: tensor {name} contains NaN or Inf")
        state[name] = value
    if expected is not None:
        check_state(expected, state, where)
    return state


def record_bytes(message: Message) -> int:
    """Bytes of a message's content, counted as Flower's ``message_size_mod`` does (arrays, configs, metrics)."""
    return int(sum(record.count_bytes() for record in message.content.values()))


# ---- the job a client is asked to do ----------------------------------------------------


@dataclass
class RoundJob:
    """Everything a client needs besides the weights: sent with every message, so clients keep no run state."""

    cfg: ExperimentConfig
    round: int
    stage: int  # which data each client holds (continual adaptation changes it between rounds)
    lr: float
    seed: int  # the client's training seed for this round
    normalizer: Normalizer | None  # None in the setup round, before it is fitted
    posthoc: dict | None = None  # a post-hoc adapter's record (name, state): clients apply it to their local evaluation
    proximal_mu: float = 0.0  # FedProx's mu, set by the strategy's configure_train (Flower's `proximal-mu` key)
    fisher_windows: int = 0  # continual ewc: estimate the Fisher on this many windows and send it back (0: no)

    def to_record(self) -> ConfigRecord:
        record = ConfigRecord({
            "fedhar-config": json.dumps(self.cfg.to_dict(), separators=(",", ":")),
            "round": self.round,
            "stage": self.stage,
            "lr": float(self.lr),
            "seed": int(self.seed),
        })  # fmt: skip
        if self.normalizer is not None:
            record["norm-mean"] = [float(v) for v in self.normalizer.mean]
            record["norm-std"] = [float(v) for v in self.normalizer.std]
        if self.posthoc is not None:
            record["posthoc"] = json.dumps(self.posthoc)
        if self.fisher_windows:
            record[FISHER_REQUEST] = int(self.fisher_windows)
        return record

    @classmethod
    def from_record(cls, record: ConfigRecord) -> "RoundJob":
        missing = [k for k in ("fedhar-config", "round", "stage", "lr", "seed") if k not in record]
        if missing:
            raise CheckpointError(
                f"the server's message lacks config keys {missing}; server and client versions differ"
            )
        cfg = from_dict(ExperimentConfig, json.loads(str(record["fedhar-config"])))
        normalizer = None
        if "norm-mean" in record:
            mean, std = (np.asarray(record[k], np.float32) for k in ("norm-mean", "norm-std"))
            normalizer = Normalizer(mean, std)
        rnd, stage, lr, seed = int(record["round"]), int(record["stage"]), float(record["lr"]), int(record["seed"])
        posthoc = json.loads(str(record["posthoc"])) if "posthoc" in record else None
        mu = float(record.get("proximal-mu", 0.0))
        if not mu >= 0:
            raise CheckpointError(f"the server's proximal-mu is {mu}, not a weight >= 0")
        fisher = int(record.get(FISHER_REQUEST, 0))
        if fisher < 0:
            raise CheckpointError(f"the server's {FISHER_REQUEST} is {fisher}, not a window count >= 0")
        return cls(cfg, rnd, stage, lr, seed, normalizer, posthoc, mu, fisher)
