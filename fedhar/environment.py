"""The process environment fedhar's entry points set before Flower, Ray or torch load (nothing is set on import).

Called by ``fedhar``'s ``main``, ``fedhar.federated.simulate.simulate`` and Flower's app modules (``clients.app``,
``server.app``); child processes (Ray workers, Flower's SuperLink and SuperNode) inherit it.
"""

import os


def set_process_environment() -> None:
    """Set, unless the user already has, the variables fedhar's processes run with:

    * ``FLWR_TELEMETRY_ENABLED=0``: Flower reads it on first import, so telemetry stays off unless the user
      opts in (``FLWR_TELEMETRY_ENABLED=1``);
    * ``OMP_WAIT_POLICY=PASSIVE``: a simulation runs several torch processes side by side on few cores, and
      OpenMP threads that spin while waiting then steal the cores the other processes need (measured here:
      evaluation with 2 threads on a busy 2-core CPU took 11.8 s spinning, 1.0 s passive). It takes effect in
      processes that load torch after this call, so call it first.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
