"""Federated training with Flower: trainable-state records, strategies, client and server logic, simulation.

``shipped_config`` finds the example configs (``configs/*.yaml``) in a checkout and in an installed fedhar.

Process environment set here, before Flower or torch are imported (Ray workers inherit it):

* ``FLWR_TELEMETRY_ENABLED=0`` unless the user set it: Flower reads it on first import, so
  telemetry stays off unless the user opts in (``FLWR_TELEMETRY_ENABLED=1``).
* ``OMP_WAIT_POLICY=PASSIVE`` unless set: a simulation runs several torch processes side by side
  on few cores, and OpenMP threads that spin while waiting then steal the cores the other
  processes need (measured here: evaluation with 2 threads on a busy 2-core CPU took 11.8 s
  spinning, 1.0 s passive). It takes effect in processes that import torch after this module.
"""

import os
from pathlib import Path

from fedhar.errors import ConfigError

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def shipped_config(name: str) -> Path:
    """``configs/<name>`` as fedhar ships it: the installed package's copy (``fedhar/configs``, mapped from the
    top-level ``configs/`` in pyproject.toml), or a source checkout's ``configs/``."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "configs", package.parent / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"fedhar ships no config `{name}`; pass --config PATH (a YAML experiment config)")
