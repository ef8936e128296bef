"""Replay (``continual.method: replay``): each client keeps a bounded buffer of its own past windows.

The buffer never leaves the device: it is added to the client's local training windows (so every local
batch mixes the current stage with earlier ones), and the server only sees the larger window count.
It holds at most ``continual.replay_size`` windows, an equal share from each earlier stage the client
took part in, each share a seeded uniform sample of that stage's training windows (class proportions
kept in expectation, what a reservoir sample would hold).

* A **simulated** client's buffer is rebuilt from the schedule: its earlier stages' windows are a pure
  function of the config, so any Ray worker serving it gets the same buffer without keeping state.
* A **deployed** client stores its share of each stage on its own disk the first time it trains in that
  stage (``<replay-dir>/stage-NNN.npz``; node config ``replay-dir``, default
  ``$FEDHAR_CACHE/replay/<run name>/<client name>``), and replays the shares of the stages before.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedhar.cache import cache_root
from fedhar.config import ExperimentConfig
from fedhar.data.windows import WindowSet

REPLAY_DIR = "replay-dir"  # node config of a deployed client: where its buffer lives


def share(ws: WindowSet, size: int, seed: int, name: str, stage: int) -> WindowSet:
    """A seeded uniform sample of at most ``size`` windows (time order kept)."""
    if len(ws) <= size:
        return ws
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), stage])
    return ws.subset(np.sort(rng.choice(len(ws), size, replace=False)))


def replay_folder(cfg: ExperimentConfig, node_config: dict, name: str) -> Path:
    """Where a deployed client keeps its buffer: node config ``replay-dir``, or the fedhar cache."""
    return Path(str(node_config.get(REPLAY_DIR) or cache_root() / "replay" / cfg.name / _safe(name)))


def replay_buffer(cfg: ExperimentConfig, name: str, stage: int, current: WindowSet,
                  past: Callable[[int], WindowSet | None], folder: Path | None = None) -> WindowSet | None:  # fmt: skip
    """The windows client ``name`` replays at ``stage`` (None: it kept none).

    ``current`` is what it trains on now. A deployed client (``folder``: its buffer on its own disk) stores its
    share of ``current`` there and replays the shares it stored at earlier stages. A simulated client
    (``folder`` None) rebuilds its buffer from ``past(k)``: its training windows at earlier stage ``k`` (None
    where it took no part), which the federated data layer derives from the schedule.
    """
    size = cfg.continual.replay_size
    quota = max(1, size // max(1, stage))
    if folder is not None:
        return _device_buffer(cfg, folder, name, stage, current, quota)
    if stage == 0:
        return None
    shares = [share(held, quota, cfg.seed, name, earlier) for earlier in range(stage)
              if (held := past(earlier)) is not None and len(held)]  # fmt: skip
    return WindowSet.concat(shares) if shares else None


def _device_buffer(cfg: ExperimentConfig, folder: Path, name: str, stage: int, current: WindowSet,
                   quota: int) -> WindowSet | None:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / f"stage-{stage:03d}.npz"
    if not mine.is_file():  # first message of this stage: keep a share of what the device holds now
        share(current, cfg.continual.replay_size, cfg.seed, name, stage).save(mine)
    shares = []
    for earlier in range(stage):
        path = folder / f"stage-{earlier:03d}.npz"
        if path.is_file():
            kept = WindowSet.load(path)
            if kept.label_names == current.label_names and kept.layout == current.layout:
                shares.append(share(kept, quota, cfg.seed, name, earlier))
    return WindowSet.concat(shares) if shares else None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100] or "client"
