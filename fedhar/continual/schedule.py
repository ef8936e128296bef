"""The stage schedule: which round is in which stage, and what the data is in each stage.

A continual run (``continual:`` in the config) is an ordered list of stages. The server drives it:
``stage_of_round`` maps a round to its stage, every message carries the stage, and a simulated client
holds what ``stage_train`` says for its stage (new users arrive, some leave, the device or placement
changes, new classes get labels). Each stage also defines a *domain*: the held-out (validation / test)
subjects' windows under the stage's device, placement, class and transform filters, which the server
scores after every stage, seen or not yet seen (``domains``).

Everything here is a pure function of the config and the window sets, so every Ray worker and the
server agree on it without talking, and a resumed run rebuilds exactly what it had.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from fedhar.config import ExperimentConfig, StageConfig
from fedhar.data.device_transform import apply_device_transform
from fedhar.data.recording import natural_key
from fedhar.data.windows import WindowSet
from fedhar.errors import ConfigError


@dataclass
class Domain:
    """One stage's held-out windows: what "after stage i, on domain j" is scored on."""

    name: str
    val: WindowSet
    test: WindowSet


def schedule(cfg: ExperimentConfig) -> list[StageConfig]:
    """The stages ([] without a continual schedule: one implicit stage)."""
    return list(cfg.continual.stages) if cfg.continual is not None else []


def num_stages(cfg: ExperimentConfig) -> int:
    return max(1, len(schedule(cfg)))


def stage_of_round(cfg: ExperimentConfig, rnd: int) -> int:
    """The stage (0-based) round ``rnd`` (1-based) trains in; rounds past the schedule stay in the last stage."""
    end = 0
    for i, stage in enumerate(schedule(cfg)):
        end += stage.rounds
        if rnd <= end:
            return i
    return max(0, len(schedule(cfg)) - 1)


def stage_last_rounds(cfg: ExperimentConfig) -> list[int]:
    """The last round of every stage (after it, a row of the accuracy matrix is scored)."""
    ends, end = [], 0
    for stage in schedule(cfg):
        end += stage.rounds
        ends.append(end)
    return ends or [cfg.federated.rounds]


def _seed(cfg: ExperimentConfig, stage: int, part: str) -> int:
    """The device transform's noise seed: one per (run seed, stage, split), independent of process and order."""
    return zlib.crc32(f"{cfg.seed}:{stage}:{part}".encode())


def stage_filter(cfg: ExperimentConfig, ws: WindowSet, stage: int, part: str, *, subjects: bool,
                 transform: bool = True) -> WindowSet:
    """``ws`` as stage ``stage`` sees it: its subjects (when ``subjects``), devices, placements and labelled
    classes, then its device transform (every transformed window is tagged with the transform's device name)."""
    spec = schedule(cfg)[stage]
    out = ws.subset(_stage_mask(cfg, ws, stage, subjects))
    if transform and spec.transform is not None and len(out):
        out = apply_device_transform(out, spec.transform, _seed(cfg, stage, part))
    return out


def _stage_mask(cfg: ExperimentConfig, ws: WindowSet, stage: int, subjects: bool) -> np.ndarray:
    """Which of ``ws`` stage ``stage`` has (its subjects when ``subjects``, devices, placements, classes)."""
    spec = schedule(cfg)[stage]
    mask = np.ones(len(ws), dtype=bool)
    if subjects and spec.subjects is not None:
        mask &= np.isin(ws.subject, np.asarray(spec.subjects, dtype=str))
    if spec.devices is not None:
        mask &= np.isin(ws.device, np.asarray(spec.devices, dtype=str))
    if spec.placements is not None:
        mask &= np.isin(ws.placement, np.asarray(spec.placements, dtype=str))
    if spec.classes is not None:
        wanted = [i for i, name in enumerate(ws.label_names) if name in spec.classes]
        mask &= np.isin(ws.y, wanted)
    return mask


def stage_train(cfg: ExperimentConfig, train: WindowSet, stage: int) -> WindowSet:
    """The training windows the clients hold at ``stage`` (``joint``: every stage's, from the first round)."""
    if cfg.continual is None:
        return train
    if cfg.continual.method != "joint":
        return stage_filter(cfg, train, stage, "train", subjects=True)
    parts = [stage_filter(cfg, train, s, "train", subjects=True) for s in range(num_stages(cfg))]
    joined = WindowSet.concat([p for p in parts if len(p)] or [train.subset(np.zeros(len(train), bool))])
    # an untransformed window in two stages (a subject in both) is one window, not two. A window is known by
    # its place in ``train`` (and its device, which a transform renames): the tags do not tell windows apart
    # (PAMAP2's session is `protocol` for every subject and IMU; windows read back from an .npz all start at 0 s)
    index = np.concatenate([np.flatnonzero(_stage_mask(cfg, train, s, subjects=True)) for s in range(num_stages(cfg))])
    keys = [f"{i}|{d}" for i, d in zip(index, joined.device)]
    _, first = np.unique(np.asarray(keys), return_index=True)
    return joined.subset(np.sort(first))


def domains(cfg: ExperimentConfig, val: WindowSet, test: WindowSet) -> list[Domain]:
    """Every stage's held-out domain (validation and test subjects under that stage's filters)."""
    if cfg.continual is None:
        return [Domain("all", val, test)]
    names = cfg.continual.stage_names
    return [Domain(names[s], stage_filter(cfg, val, s, "val", subjects=False),
                   stage_filter(cfg, test, s, "test", subjects=False)) for s in range(num_stages(cfg))]  # fmt: skip


def check_schedule(cfg: ExperimentConfig, train: WindowSet, val: WindowSet, test: WindowSet) -> None:
    """Stop before round 1 when a stage names a subject, class, device or placement the data lacks, or leaves a
    stage without training windows or a domain without held-out windows: one line naming the stage."""
    if cfg.continual is None:
        return
    names = cfg.continual.stage_names
    held = [w for w in (train, val, test) if len(w)]
    for s, spec in enumerate(schedule(cfg)):
        where = f"continual.stages[{s}] ({names[s]})"
        for key, tag, sets in (("subjects", "subject", [train]), ("devices", "device", held),
                               ("placements", "placement", held)):  # fmt: skip
            wanted = getattr(spec, key)
            if wanted is None:
                continue
            have = set().union(*(set(getattr(w, tag).tolist()) for w in sets))
            missing = [v for v in wanted if v not in have]
            if missing:
                what = "training subjects" if key == "subjects" else key
                raise ConfigError(f"{where}.{key}: {missing} not in the data; its {what}: "
                                  f"{sorted(have, key=natural_key)}")  # fmt: skip
        if spec.classes is not None:
            missing = [c for c in spec.classes if c not in train.label_names]
            if missing:
                raise ConfigError(f"{where}.classes: {missing} not in the data's classes {list(train.label_names)}")
        if len(stage_filter(cfg, train, s, "train", subjects=True, transform=False)) == 0:
            raise ConfigError(f"{where}: no training window matches the stage's subjects, devices, placements and "
                              "classes together")  # fmt: skip
        for part, ws in (("val", val), ("test", test)):
            if len(ws) and len(stage_filter(cfg, ws, s, part, subjects=False, transform=False)) == 0:
                raise ConfigError(f"{where}: the held-out {part} subjects have no window of this stage's devices, "
                                  "placements and classes, so its domain cannot be scored")  # fmt: skip
