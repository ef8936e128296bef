"""``fedhar simulate``: the fedhar Flower apps on Flower's simulation engine (Ray backend), from Python.

Why ``flwr.simulation.run_simulation`` (deprecated in Flower 1.42 in favour of ``flwr run``):
``flwr run`` submits the app to a SuperLink. For a local simulation it starts a *detached*
``flower-superlink`` that outlives the command (a process left behind), builds and installs the
app as a FAB, and by default re-installs the app's dependencies with uv. ``run_simulation``
runs the same ServerApp main and ClientApp on the same Ray-backed engine inside this process:
nothing outlives the command, no re-install, and errors reach the caller as exceptions.
Its deprecation warning is silenced unless ``-v``; ``flwr run .`` remains supported (docs/federated.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

from fedhar import posthoc
from fedhar.config import ExperimentConfig
from fedhar.environment import set_process_environment
from fedhar.errors import ConfigError, FedharError
from fedhar.continual import schedule
from fedhar.federated.data import simulated_partition, subject_split
from fedhar.federated.aggregation import check_strategy
from fedhar.federated.membership import sample_size
from fedhar.results.run import RunDir


def backend_config(cfg: ExperimentConfig, verbose: bool = False) -> dict:
    """Ray resources: CPUs per client (one Ray actor each) and, locally, how many clients run at once."""
    fed = cfg.federated
    init_args: dict = {"include_dashboard": False, "logging_level": "INFO" if verbose else "ERROR",
                       "log_to_driver": verbose}  # fmt: skip
    if fed.ray_address:
        init_args["address"] = fed.ray_address  # an existing cluster decides its own CPUs
    else:
        cpus = os.cpu_count() or 1
        if fed.max_concurrent_clients:
            cpus = fed.max_concurrent_clients * fed.cpus_per_client
        if fed.cpus_per_client > cpus:
            raise ConfigError(
                f"federated.cpus_per_client={fed.cpus_per_client} exceeds the {cpus} CPUs this simulation may use; "
                "lower it (or attach to a bigger Ray cluster with federated.ray_address)"
            )
        # "local": always a fresh Ray instance of our own, never a cluster that `ray start` left on this machine;
        # on the loopback interface only (see `loopback_ray`)
        init_args.update(address="local", num_cpus=cpus, num_gpus=0, _node_ip_address=LOOPBACK)
    return {"client_resources": {"num_cpus": fed.cpus_per_client, "num_gpus": 0.0}, "init_args": init_args}


LOOPBACK = "127.0.0.1"
#: Ray's own switch for single-machine instances (named for Windows/macOS, where it is the default): with it off,
#: Ray takes the loopback address as the node's address, and every server it starts listens there alone
RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_ray(local: bool) -> Iterator[None]:
    """While it is open, a Ray instance started in this process listens on 127.0.0.1 only.

    Why: Ray authenticates nothing by default, and on Linux its GCS, raylets and workers listen on
    every interface, so anyone who reaches the machine could run code on it through a simulation's
    private instance. Ray resolves a ``_node_ip_address`` of 127.0.0.1 back to the external address
    unless its cluster switch is off; the switch is read once at import, so both the module value (this
    process) and the environment (the processes Ray starts) are set, and restored afterwards so that a later
    run attaching to a real cluster (``federated.ray_address``) in the same process is not affected.
    ``local=False`` (an attached cluster) changes nothing: that cluster decides where it listens.
    """
    if not local:
        yield
        return
    import ray._private.ray_constants as ray_constants

    before_env, before_value = os.environ.get(RAY_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_value
        if before_env is None:
            os.environ.pop(RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[RAY_CLUSTER_SWITCH] = before_env


def check_federation(cfg: ExperimentConfig) -> list[str]:
    """Names of the simulated clients; rejects a schedule that names what the data lacks, and a federation (at any
    stage) too small for ``min_clients``."""
    if cfg.continual is not None:
        schedule.check_schedule(cfg, *subject_split(cfg))
    for stage in range(schedule.num_stages(cfg)):
        parts, names = simulated_partition(cfg, stage)
        holding = [n for n, p in zip(names, parts) if len(p)]
        if len(holding) < cfg.federated.min_clients:
            where = f"stage {stage} ({cfg.continual.stage_names[stage]}): " if cfg.continual is not None else ""
            raise ConfigError(
                f"{where}federated.partition={cfg.federated.partition} makes {len(holding)} clients with data, fewer "
                f"than federated.min_clients={cfg.federated.min_clients}; lower min_clients or add training "
                "subjects/clients"
            )
        k = cfg.federated.clients_per_round
        if k is not None and len(holding) < k:
            where = f"stage {stage} ({cfg.continual.stage_names[stage]}): " if cfg.continual is not None else ""
            raise ConfigError(f"{where}federated.clients_per_round={k}, but the data gives {len(holding)} clients "
                              f"with data (federated.partition={cfg.federated.partition}); lower clients_per_round "
                              "or add clients")  # fmt: skip
    return simulated_partition(cfg, 0)[1]


def preflight(cfg: ExperimentConfig) -> tuple[ExperimentConfig, list[str]]:
    """Every check that can fail before anything starts: strategy vs model, client count, cluster address."""
    if cfg.train.init_from is not None:  # transfer: the source checkpoint must be one, before anything starts
        from fedhar.model.state import check_init_source

        cfg.train.init_from = str(check_init_source(cfg.train.init_from, cfg.model))
    names = check_federation(cfg)
    parts, _ = simulated_partition(cfg)
    cfg = check_strategy(cfg, sample_size(sum(1 for p in parts if len(p)), cfg))  # Krum's f against the sample...
    if (posthoc_config := posthoc.configured(cfg)) is not None:
        train, _, _ = subject_split(cfg)
        posthoc_config.check(train.label_names)
    if cfg.federated.ray_address:
        check_reachable(cfg.federated.ray_address)
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            logging.getLogger(__name__).warning(
                "federated.ray_address=%s: RAY_AUTH_MODE=token is not set here, so the cluster most likely runs "
                "without authentication (anyone reaching its ports can run code on it); see docs/security.md",
                cfg.federated.ray_address)  # fmt: skip
    return cfg, names


def simulate(cfg: ExperimentConfig, run: RunDir, resume: bool = False, verbose: bool = False,
             progress: bool = True) -> dict:  # fmt: skip
    """Run (or resume) the federation in ``cfg``, results in ``run``; returns the ``metrics.json`` summary."""
    cfg, names = preflight(cfg)
    set_process_environment()  # before Ray starts: its workers inherit it
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray's usage reporting: opt in, like Flower's
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # never let Ray re-create the env with uv
    os.environ.setdefault("RAY_DEDUP_LOGS", "0" if verbose else "1")

    import ray
    from flwr.simulation import run_simulation

    from fedhar.federated.client_app import app as client_app
    from fedhar.federated.server import ServerJob, build_server_app

    # Flower's logger propagates to the root handler; quiet unless -v (client errors come back in replies)
    logging.getLogger("flwr").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    stop = threading.Event()
    job = ServerJob(cfg, run, resume=resume, expected_nodes=len(names), progress=progress, stop=stop,
                    simulated=True)  # fmt: skip
    children_before = _child_pids()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), loopback_ray(local=not cfg.federated.ray_address):
            if not verbose:
                warnings.simplefilter("ignore")
            run_simulation(
                server_app=build_server_app(job),
                client_app=client_app,
                num_supernodes=len(names),
                backend_config=backend_config(cfg, verbose),
                verbose_logging=verbose,
            )
    except RuntimeError as e:  # the engine itself failed (Ray could not start, a worker died, ...)
        raise FedharError(f"Flower's simulation engine stopped: {_root_cause(e)} (rerun with -v for its logs)") from e
    finally:
        stop.set()  # the server loop must not outlive the engine (its thread would keep the process alive)
        if ray.is_initialized():
            ray.shutdown()
        _reap_children(children_before)
    run.update_json("metrics.json", simulation_wall_seconds=round(time.perf_counter() - t0, 2),
                    ray_address=cfg.federated.ray_address or "local")  # fmt: skip
    return json.loads(run.file("metrics.json").read_text())


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` where no Ray head listens (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "ray://..." and other forms: left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(
            f"federated.ray_address={address}: no Ray head answers there ({e.strerror or e}); start one with "
            f"`ray start --head --port {port}` or fix the address"
        ) from None


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def _child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _reap_children(before: set[int], grace_s: float = 10.0) -> None:
    """Wait for the processes this simulation started (Ray's) to exit; terminate any that linger, by pid."""
    import psutil

    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(started, timeout=grace_s)
    for p in alive:
        p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=3)
    for p in alive:
        p.kill()
