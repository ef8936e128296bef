"""Where a client's windows come from: the one decision point, plus the held-out sets the server scores.

``client_data`` is the only function that decides which windows a node holds. It receives the
node's config (Flower's ``node_config``) and the round's ``stage`` from the server's message:

* a **simulated** node (``partition-id``, set by Flower's simulation engine) holds a partition of the
  experiment's *training* subjects (``federated.partition``); the validation and test subjects never
  reach a client;
* a **deployed** node (``data-path``, set by ``fedhar client --data``) holds the device's own
  recordings: a dataset folder of any supported layout, a folder of CSV files, one CSV of raw
  samples, or a saved ``.npz`` window set, optionally narrowed to some ``subjects``. They are
  windowed exactly as the server's config says (rate, window, overlap, sensors, label mapping) and
  mapped onto the server's ``data.classes``, so every client's windows fit the global model.

A continual schedule (``continual:``, ``fedhar.continual.schedule``) changes what clients hold between
rounds: the server sends the stage with every message, a simulated node holds its partition of that
stage's training windows (the same node is the same user in every stage: a subject who takes no part
in a stage holds nothing and sits it out), and with ``continual.method: replay`` each client adds its
bounded buffer of its own earlier stages' windows (``fedhar.continual.replay``). A deployed node is
told the stage and keeps holding what its device records.

Window sets and partitions are cached per process (each Ray worker or device loads them once per
run; ``load_windows`` adds an on-disk cache across runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedhar.config import ExperimentConfig, SplitConfig
from fedhar.continual import schedule
from fedhar.continual.replay import replay_buffer, replay_folder
from fedhar.data.partition import NATURAL, client_names, partition
from fedhar.data.pipeline import load_windows, naming_the_csv, one_csv_as_folder, split_windows, window_cache_dir
from fedhar.data.recording import natural_key
from fedhar.data.splits import low_label_per_client
from fedhar.data.windows import WindowSet
from fedhar.errors import ConfigError, DataError

PARTITION_ID = "partition-id"  # set by Flower's simulation engine for every virtual node
DATA_PATH = "data-path"  # a deployed node's own recordings (`fedhar client --data`)
DATASET = "dataset"  # their layout (a loader name; default: detected)
SUBJECTS = "subjects"  # optional: only these subjects of the recordings (comma-separated)
CLIENT_NAME = "name"  # optional: the client's name in results (default: host and folder)

_SPLITS: dict[str, tuple[WindowSet, WindowSet, WindowSet]] = {}
_PARTITIONS: dict[str, tuple[list[np.ndarray], list[str]]] = {}  # one run's partitions, one entry per stage
_STAGE_TRAIN: dict[str, WindowSet] = {}  # one run's training windows per stage
_LOCAL: dict[str, tuple[str, WindowSet]] = {}


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
        _SPLITS[key] = split_windows(cfg.data, cfg.seed)
    return _SPLITS[key]


def held_out_split(cfg: ExperimentConfig) -> tuple[WindowSet, WindowSet]:
    """Validation and test windows alone: what a deployment's server scores.

    The devices hold the training data, so the server's folder needs only the held-out subjects when they
    are named (``data.split.val`` / ``test``, or ``split.named``). A split by seeded fractions of all
    subjects is drawn as a simulation draws it, which needs every subject in the folder.
    """
    from fedhar.data.splits import NAMED_SPLITS

    split = cfg.data.split
    if split.named:
        if split.named not in NAMED_SPLITS:
            raise DataError(f"unknown named split `{split.named}`; known: {sorted(NAMED_SPLITS)}")
        val, test = list(split.val or []), list(NAMED_SPLITS[split.named])
    elif split.val or split.test:
        val, test = list(split.val or []), list(split.test or [])
    else:  # fractions of all subjects: drawn as a simulation draws them, so the folder must hold every subject
        _, val_ws, test_ws = subject_split(cfg)
        return val_ws, test_ws
    val, test = [str(s) for s in val], [str(s) for s in test]
    if set(val) & set(test):
        raise DataError(f"subjects {sorted(set(val) & set(test))} are in both data.split.val and data.split.test")
    ws = load_windows(cfg.data, cfg.seed)
    present = sorted(set(ws.subject.tolist()))
    missing = [s for s in val + test if s not in present]
    if missing:
        raise DataError(f"{cfg.data.path}: the held-out subjects {missing} are not in the server's data (it has "
                        f"{present}); the server needs the validation and test subjects, not the devices' ones")  # fmt: skip
    return ws.where(subject=val), ws.where(subject=test)


def stage_windows(cfg: ExperimentConfig, stage: int = 0) -> WindowSet:
    """The training windows the simulated clients hold at ``stage`` (the training split without a schedule)."""
    run = json.dumps([_data_key(cfg), cfg.to_dict()["continual"]], default=str)
    key = f"{run}|{stage}"
    if key not in _STAGE_TRAIN:
        if not any(k.startswith(f"{run}|") for k in _STAGE_TRAIN):
            _STAGE_TRAIN.clear()  # another run's: one run's stages are kept, not every run's
        train, _, _ = subject_split(cfg)
        _STAGE_TRAIN[key] = schedule.stage_train(cfg, train, stage)
    return _STAGE_TRAIN[key]


def simulated_partition(cfg: ExperimentConfig, stage: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Window indices (into ``stage_windows(cfg, stage)``) and names of the simulated nodes at ``stage``.

    The nodes are the same in every stage (node k is one user throughout): with a natural partition
    (subject, device, placement) one node per value the tag takes in *any* stage, holding nothing in a stage
    it takes no part in; with dirichlet / iid ``num_clients`` nodes, each stage's windows split afresh.
    """
    fed = cfg.federated
    run = json.dumps([_data_key(cfg), cfg.to_dict()["continual"], fed.partition, fed.num_clients, fed.alpha,
                      fed.quantity_skew], default=str)  # fmt: skip
    key = f"{run}|{stage}"
    if key not in _PARTITIONS:
        if not any(k.startswith(f"{run}|") for k in _PARTITIONS):
            _PARTITIONS.clear()
        ws = stage_windows(cfg, stage)
        if cfg.continual is None or fed.partition not in NATURAL:
            seed = cfg.seed if stage == 0 else cfg.seed + 7919 * stage
            if len(ws) == 0:
                raise DataError(f"stage {stage} holds no training windows")
            parts = partition(ws, fed.partition, fed.num_clients, fed.alpha, fed.quantity_skew, seed=seed)
            names = client_names(ws, fed.partition, parts)
        else:  # the population of every stage, so node ids keep their user across stages
            values = sorted(set().union(*(set(getattr(stage_windows(cfg, s), fed.partition).tolist())
                                          for s in range(schedule.num_stages(cfg)))), key=natural_key)  # fmt: skip
            tags = getattr(ws, fed.partition)
            parts = [np.flatnonzero(tags == v) for v in values]
            names = [f"{fed.partition}-{v}" for v in values]
        _PARTITIONS[key] = (parts, names)
    return _PARTITIONS[key]


def stage_of_round(cfg: ExperimentConfig, rnd: int) -> int:
    """The data stage round ``rnd`` trains on (0 without a continual schedule); the server describes the
    federation again whenever the stage changes."""
    return schedule.stage_of_round(cfg, rnd)


def client_data(cfg: ExperimentConfig, node_config: dict, stage: int) -> ClientData | None:
    """The windows this node holds at ``stage``; None when it holds none (it sits the round out)."""
    if DATA_PATH in node_config:
        name, windows = device_windows(cfg, node_config)
        windows = labelled_part(cfg, name, windows)
    elif PARTITION_ID in node_config:
        parts, names = simulated_partition(cfg, stage)
        pid = int(node_config[PARTITION_ID])
        if pid >= len(parts) or len(parts[pid]) == 0:
            return None
        name = names[pid]
        windows = labelled_part(cfg, name, stage_windows(cfg, stage).subset(parts[pid]))
        attack = cfg.federated.attack
        if attack is not None and attack.kind == "label-flip":  # simulated data poisoning (fedhar.federated.attacks)
            from fedhar.federated.attacks import attacking_clients, flip_labels

            if name in attacking_clients(cfg, [n for n, p in zip(names, parts) if len(p)]):
                windows = dataclasses.replace(windows, y=flip_labels(windows.y, len(windows.label_names)))
    else:
        raise ConfigError(
            f"this node's config has neither `{DATA_PATH}` (a device's own recordings: `fedhar client --data PATH`) "
            f"nor `{PARTITION_ID}` (set by Flower's simulation engine)"
        )
    if len(windows) == 0:
        return None
    fit_part, val_part = local_holdout(windows, cfg.federated.client_val_fraction)
    if cfg.continual is not None and cfg.continual.method == "replay":  # (a device also keeps this stage's share)
        folder = replay_folder(cfg, node_config, name) if DATA_PATH in node_config else None
        buffer = replay_buffer(cfg, name, stage, fit_part, lambda k: simulated_training_windows(cfg, name, k), folder)
        if buffer is not None and len(buffer):
            fit_part = WindowSet.concat([fit_part, buffer])
    return ClientData(name, fit_part, val_part)


def simulated_training_windows(cfg: ExperimentConfig, name: str, stage: int) -> WindowSet | None:
    """Simulated client ``name``'s local training windows at ``stage`` (None: it holds none then): what its
    replay buffer samples from at later stages, the same on any Ray worker."""
    parts, names = simulated_partition(cfg, stage)
    if name not in names or len(parts[names.index(name)]) == 0:
        return None
    windows = labelled_part(cfg, name, stage_windows(cfg, stage).subset(parts[names.index(name)]))
    return local_holdout(windows, cfg.federated.client_val_fraction)[0]


def labelled_part(cfg: ExperimentConfig, name: str, windows: WindowSet) -> WindowSet:
    """The low-label protocols (``data.labelled_per_class`` / ``labelled_percent``) per client: each client keeps
    k windows per class, or p % of each class, of its *own* windows, seeded by the run's seed and its name (the
    same windows a centralized run with ``data.labelled_per_subject: true`` keeps of that subject)."""
    per_class, percent = cfg.data.labelled_per_class, cfg.data.labelled_percent
    if per_class is None and percent is None:
        return windows
    return low_label_per_client(windows, cfg.seed, name, per_class, percent)


def device_windows(cfg: ExperimentConfig, node_config: dict) -> tuple[str, WindowSet]:
    """A deployed node's name and windows: its own recordings, prepared as the server's config says."""
    if not cfg.data.classes:
        raise ConfigError("the server's config must list `data.classes`: deployed clients map their own "
                          "recordings onto that label list, so every client's windows fit the global "
                          "model")  # fmt: skip
    path = Path(str(node_config[DATA_PATH])).expanduser().resolve()
    subjects = [s for s in re.split(r"[,\s]+", str(node_config.get(SUBJECTS, "")).strip()) if s]
    # a device's windows are all training windows: cut at train_overlap when it is set; its recordings are
    # read with their own loader's defaults (the server's loader_options describe the server's files)
    local = dataclasses.replace(
        cfg.data, dataset=_device_dataset(node_config, path), path=str(one_csv_as_folder(path, "--data")), classes=None,
        split=SplitConfig(), synthetic={}, cache_dir=None, loader_options={},
        overlap=cfg.data.overlap if cfg.data.train_overlap is None else cfg.data.train_overlap, train_overlap=None,
    )  # fmt: skip
    key = json.dumps([dataclasses.asdict(local), cfg.data.classes, cfg.seed, subjects,
                      str(node_config.get(CLIENT_NAME, ""))], sort_keys=True, default=str)  # fmt: skip
    if key not in _LOCAL:
        with _window_cache_lock(), naming_the_csv(Path(local.path), path):
            windows = load_windows(local, cfg.seed)
        if subjects:
            present = sorted(set(windows.subject.tolist()))
            missing = [s for s in subjects if s not in present]
            if missing:
                raise DataError(f"{path}: subjects {missing} are not in these recordings (they have {present})")
            windows = windows.where(subject=subjects)
        windows = windows.onto_classes(list(cfg.data.classes))  # a device need not have recorded every class
        name = str(node_config.get(CLIENT_NAME) or default_client_name(path, subjects))
        _LOCAL.clear()
        _LOCAL[key] = (name, windows)
    return _LOCAL[key]


@contextlib.contextmanager
def _window_cache_lock():
    """Clients on one machine (a test bed, a gateway serving several wearables) that read the same recordings
    would fill the same window-cache entry at once; one at a time, the others then read the cached windows."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    folder = window_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".devices.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def default_client_name(path: Path, subjects: list[str]) -> str:
    """``<host>-<folder>`` (plus ``-s<subjects>``): unique per device folder, readable in results."""
    name = f"{socket.gethostname().split('.')[0]}-{path.stem}"
    return f"{name}-s{'+'.join(subjects)}" if subjects else name


def _device_dataset(node_config: dict, path: Path) -> str:
    """The loader a device's --data needs: as given, else detected (one CSV file: the generic layout)."""
    given = str(node_config.get(DATASET, "auto"))
    return "generic" if given == "auto" and path.suffix.lower() == ".csv" else given


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
