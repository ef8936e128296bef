"""Federated training with Flower: trainable-state records, strategies, client and server logic, simulation.

Process environment set here, before Flower or torch are imported (Ray workers inherit it):

* ``FLWR_TELEMETRY_ENABLED=0`` unless the user set it: Flower reads it on first import, so
  telemetry stays off unless the user opts in (``FLWR_TELEMETRY_ENABLED=1``).
* ``OMP_WAIT_POLICY=PASSIVE`` unless set: a simulation runs several torch processes side by side
  on few cores, and OpenMP threads that spin while waiting then steal the cores the other
  processes need (measured here: evaluation with 2 threads on a busy 2-core CPU took 11.8 s
  spinning, 1.0 s passive). It takes effect in processes that import torch after this module.
"""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
