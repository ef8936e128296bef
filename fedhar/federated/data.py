"""Where a client's windows come from: the one decision point, plus the held-out sets the server scores.

Simulated clients hold a partition of the *training* subjects' windows (``federated.partition``);
the validation and test subjects never reach a client. ``client_data`` is the only function
that decides which windows a node holds. It receives the node's config (Flower's
``node_config``: ``partition-id`` in simulation) and the round's ``stage`` from the server's
message, so a data schedule that changes what clients hold, or which clients exist, between
rounds (continual adaptation) is a change to this module (``stage_of_round``, ``client_data``), not
to the client or the round loop. In this version there is one stage, the configured partition.

Window sets and partitions are cached per process (each Ray worker loads them once per run;
``load_windows`` adds an on-disk cache across runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from fedhar.config import ExperimentConfig
from fedhar.data.partition import client_names, partition
from fedhar.data.pipeline import load_windows
from fedhar.data.splits import split_by_subject
from fedhar.data.windows import WindowSet
from fedhar.errors import ConfigError

PARTITION_ID = "partition-id"  # set by Flower's simulation engine for every virtual node

_SPLITS: dict[str, tuple[WindowSet, WindowSet, WindowSet]] = {}
_PARTITIONS: dict[str, tuple[list[np.ndarray], list[str]]] = {}


@dataclass
class ClientData:
    name: str
    train: WindowSet
    val: WindowSet | None  # local held-out windows (federated.client_val_fraction), for client-side evaluation


def _data_key(cfg: ExperimentConfig) -> str:
    return json.dumps({"data": cfg.to_dict()["data"], "seed": cfg.seed}, sort_keys=True, default=str)


def subject_split(cfg: ExperimentConfig) -> tuple[WindowSet, WindowSet, WindowSet]:
    """Train / validation / test windows of the experiment (cached per process; one cache entry)."""
    key = _data_key(cfg)
    if key not in _SPLITS:
        _SPLITS.clear()
        _SPLITS[key] = split_by_subject(load_windows(cfg.data, cfg.seed), cfg.data.split, cfg.seed)
    return _SPLITS[key]


def simulated_partition(cfg: ExperimentConfig, stage: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Window indices (into the training split) and names of the simulated clients at ``stage``."""
    fed = cfg.federated
    key = json.dumps([_data_key(cfg), fed.partition, fed.num_clients, fed.alpha, fed.quantity_skew, stage])
    if key not in _PARTITIONS:
        train, _, _ = subject_split(cfg)
        parts = partition(train, fed.partition, fed.num_clients, fed.alpha, fed.quantity_skew, seed=cfg.seed)
        _PARTITIONS.clear()
        _PARTITIONS[key] = (parts, client_names(train, fed.partition, parts))
    return _PARTITIONS[key]


def stage_of_round(cfg: ExperimentConfig, rnd: int) -> int:
    """The data stage round ``rnd`` trains on. This version has one stage (0); a continual schedule maps
    rounds to stages here, and the server describes the federation again whenever the stage changes."""
    return 0


def client_data(cfg: ExperimentConfig, node_config: dict, stage: int) -> ClientData | None:
    """The windows this node holds at ``stage``; None when it holds none (it sits the round out)."""
    if PARTITION_ID not in node_config:
        raise ConfigError(
            f"this node's config has no `{PARTITION_ID}`; simulated clients get it from Flower's simulation engine"
        )
    parts, names = simulated_partition(cfg, stage)
    pid = int(node_config[PARTITION_ID])
    if pid >= len(parts) or len(parts[pid]) == 0:
        return None
    train, _, _ = subject_split(cfg)
    windows = train.subset(parts[pid])
    fit_part, val_part = local_holdout(windows, cfg.federated.client_val_fraction)
    return ClientData(names[pid], fit_part, val_part)


def local_holdout(ws: WindowSet, fraction: float) -> tuple[WindowSet, WindowSet | None]:
    """Hold out the end of each recording session (not scattered windows that overlap training windows)."""
    if fraction <= 0:
        return ws, None
    keep = np.ones(len(ws), dtype=bool)
    for session in np.unique(ws.session):
        idx = np.flatnonzero(ws.session == session)
        idx = idx[np.argsort(ws.start_s[idx], kind="stable")]
        n_val = int(round(fraction * len(idx)))
        if 0 < n_val < len(idx):
            keep[idx[-n_val:]] = False
    if keep.all():
        return ws, None
    return ws.subset(keep), ws.subset(~keep)
