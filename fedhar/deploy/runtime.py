"""Flower 1.42's deployment runtime, driven from fedhar: SuperLink / SuperNode processes, the Control API,
and the long-lived processes that execute fedhar's ServerApp and ClientApp.

Why fedhar executes the apps itself (Flower's ``--isolation process``): with the default
``subprocess`` isolation, a SuperNode starts a fresh ``flwr-clientapp`` process for every message,
which imports torch, rebuilds the model and reloads the frozen backbone each time (seconds to
minutes per message on a small device), and it installs and runs the app code that the *server*
sent in its FAB. In ``process`` isolation the SuperNode only queues tasks on its local Runtime API;
``fedhar client`` claims them (``AcquireTask``) and runs the installed fedhar ClientApp in
one process that keeps its model between rounds, so a device executes only the fedhar it has
installed. ``fedhar server`` does the same on the SuperLink for the ServerApp, so the round loop
runs in the ``fedhar server`` process with its config, progress output and errors in hand.

``AcquireTask`` is protected by a per-start shared secret (``--superexec-auth-secret-file``) so
that nobody else who reaches a Runtime API can claim fedhar's tasks. Everything else (Fleet API,
messages, node registration, heartbeats) is Flower's own, unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedhar import __version__
from fedhar.console import console
from fedhar.errors import ConfigError, FedharError

log = logging.getLogger("fedhar.deploy")

APP_PUBLISHER, APP_NAME = "fedhar", "fedhar"
APP_ID = f"{APP_PUBLISHER}/{APP_NAME}"
ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"
TASK_POLL_S = 0.2
PROCESS_START_S = 60.0


class StartFailed(FedharError):
    """A Flower process exited, or did not listen, while starting (its log says why)."""

    def __init__(self, message: str, service: Service):
        super().__init__(message)
        self.service = service


def say(text: str) -> None:
    """One console line per event (not wrapped: servers and devices usually log to files)."""
    console.print(text, soft_wrap=True)


def quiet_flower(verbose: bool) -> None:
    """Flower's logger in fedhar's own processes: warnings only (everything with ``-v``), printed once.

    Importing Flower sets its logger to DEBUG, so this runs after the import."""
    import fedhar.deploy.flower_internals  # noqa: F401 - imports Flower, which configures the "flwr" logger

    flower = logging.getLogger("flwr")
    flower.setLevel(logging.DEBUG if verbose else logging.WARNING)
    flower.propagate = False  # Flower's console handler prints it; the root handler would print it again


# ---- addresses, TLS, processes ----------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    """How a connection to the SuperLink is secured: TLS verified against ``ca``, or ``insecure`` (plain HTTP)."""

    insecure: bool = False
    ca: Path | None = None  # CA certificate that signed the SuperLink's certificate
    cert: Path | None = None  # SuperLink side only: its certificate and key
    key: Path | None = None

    def check(self, side: str) -> None:
        if self.insecure:
            return
        needed = {"CA certificate": self.ca}
        if side == "server":
            needed.update({"server certificate": self.cert, "server key": self.key})
        for what, path in needed.items():
            if path is None or not Path(path).is_file():
                problem = "is not set" if path is None else f"{path} does not exist"
                raise ConfigError(
                    f"TLS is on by default and the {what} {problem}; "
                    "create a test deployment's files with `fedhar certs --out certs`, or pass --insecure "
                    "(unencrypted, no device authentication) explicitly"
                )


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) → (host, port), the host without brackets."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or "://" in address:
        raise ConfigError(f"`{address}` is not HOST:PORT (e.g. 127.0.0.1:9092 or myserver.lan:9092)")
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" in host and not bracketed:
        raise ConfigError(f"`{address}`: write an IPv6 address in brackets, e.g. [::1]:9092")
    return host[1:-1] if bracketed else host, int(port)


def join_address(host: str, port: int) -> str:
    """``host:port`` as URLs and gRPC need it: an IPv6 host in brackets (``[::1]:9092``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def local_address(host: str) -> str:
    """Where this machine reaches a service bound to ``host`` (a wildcard bind is reached on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class Service:
    """A Flower process (SuperLink or SuperNode) started by fedhar, stopped by its pid, output in a log file.

    On Linux the process gets SIGTERM when the fedhar process that started it dies (even by SIGKILL),
    so a crashed ``fedhar client`` never leaves an orphan SuperNode accepting work nobody does.
    """

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str]):
        self.name, self.command, self.log_path = name, command, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.log_start = self._log.tell()  # the log is appended to across restarts: this process's part starts here
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self, max_bytes: int = 1 << 20) -> str:
        """What this process has logged (not an earlier process's part of the same file), without colours;
        at most its last ``max_bytes``."""
        try:
            with open(self.log_path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(self.log_start, end - max_bytes))
                data = f.read()
        except OSError:
            return ""
        return re.sub(r"\x1b\[[0-9;]*m", "", data.decode(errors="replace"))

    def log_tail(self, lines: int = 6) -> str:
        text = self.log_text(256 * 1024).strip().splitlines()
        return "\n".join(line.strip() for line in text[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (Flower shuts down gracefully: a SuperNode leaves the federation), SIGKILL after ``grace_s``."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@functools.cache
def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux; None elsewhere).

    ``prctl`` is looked up here, in the parent: loading libc in the forked child (dlopen) can deadlock
    when another thread of the parent held the loader's lock at the fork."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, sigterm = ctypes.CDLL("libc.so.6", use_errno=True).prctl, int(signal.SIGTERM)

    def set_death_signal() -> None:
        prctl(1, sigterm)  # PR_SET_PDEATHSIG

    return set_death_signal


def flower_env(home: Path) -> dict[str, str]:
    """Environment of the Flower processes: their own FLWR_HOME, no telemetry (unless the user opted in),
    and never a runtime re-install of the app's dependencies."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    bin_dir = str(Path(sys.executable).parent)  # flower-superlink / flower-supernode of this environment
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def write_secret(path: Path) -> Path:
    """A fresh random shared secret for the Runtime API's AcquireTask (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def start_service(name: str, command: list[str], log_path: Path, env: dict[str, str], host: str,
                  port: int) -> Service:  # fmt: skip
    """Start a Flower process and wait until it listens on host:port; a process that fails to is stopped."""
    service = Service(name, command, log_path, env)
    try:
        wait_until_listening(service, host, port, PROCESS_START_S)
    except BaseException:
        service.stop()
        raise
    return service


def wait_until_listening(service: Service, host: str, port: int, timeout_s: float) -> None:
    """Block until ``service`` accepts TCP connections on host:port; fail with its log if it exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not service.alive():
            raise StartFailed(f"{service.name} exited (code {service.process.returncode}) while starting; "
                              f"its log {service.log_path} ends with:\n{service.log_tail()}", service)  # fmt: skip
        with contextlib.suppress(OSError), socket.create_connection((local_address(host), port), timeout=1):
            return
        if time.monotonic() > deadline:
            raise StartFailed(f"{service.name} did not listen on {join_address(host, port)} within {timeout_s:.0f} "
                              f"s; see {service.log_path}", service)  # fmt: skip
        time.sleep(0.2)


def start_superlink(host: str, port: int, tls: Tls, secret_file: Path, log_dir: Path) -> Service:
    """``flower-superlink`` in process isolation (fedhar runs the ServerApp), its log in ``log_dir``.

    Its state (registered devices, runs, messages) stays in memory: ``fedhar server`` registers the device
    keys at every start, and devices whose SuperNode the restarted SuperLink no longer knows start it
    again and rejoin. (A SQLite ``--database`` kept node ids across restarts but made every object
    transfer a database transaction: about 1 s more per message here.)
    """
    command = ["flower-superlink", "--host", host, "--port", str(port), "--isolation", "process",
               "--superexec-auth-secret-file", str(secret_file),
               "--disable-runtime-dependency-installation"]  # fmt: skip
    if tls.insecure:
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key),
                    "--enable-supernode-auth"]  # fmt: skip
    return start_service("SuperLink", command, log_dir / "superlink.log", flower_env(log_dir / "flwr-home"),
                         host, port)  # fmt: skip


def node_config_arg(node_config: dict[str, str | int | float]) -> str:
    """Flower's ``--node-config`` syntax: space-separated ``key=value`` with TOML values (JSON strings are TOML)."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in node_config.items())


def start_supernode(superlink: str, tls: Tls, auth_key: Path | None, node_config: dict, runtime_port: int,
                    secret_file: Path, work_dir: Path, heartbeat_s: float | None = None) -> Service:  # fmt: skip
    """Flower's SuperNode in process isolation: it queues the server's messages on 127.0.0.1:runtime_port.

    Run through ``fedhar.deploy.supernode`` (Flower's ``flower-supernode``, exiting when it gives up,
    heartbeating every ``heartbeat_s``: see that module)."""
    from fedhar.deploy.supernode import DEFAULT_HEARTBEAT_S

    command = [sys.executable, "-m", "fedhar.deploy.supernode", "--heartbeat-interval",
               str(heartbeat_s or DEFAULT_HEARTBEAT_S), "--superlink", superlink, "--isolation", "process",
               "--host", "127.0.0.1", "--port", str(runtime_port), "--superexec-auth-secret-file", str(secret_file),
               "--node-config", node_config_arg(node_config)]  # fmt: skip
    if tls.insecure:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(tls.ca)]
    if auth_key is not None:
        command += ["--auth-supernode-private-key", str(auth_key)]
    return start_service("SuperNode", command, work_dir / "supernode.log", flower_env(work_dir / "flwr-home"),
                         "127.0.0.1", runtime_port)  # fmt: skip


# ---- Flower clients: Control API and Runtime API ---------------------------------------------------


def _verify(tls: Tls) -> tuple[bool, str | None]:
    return (True, None) if tls.insecure else (False, str(tls.ca))


def control_client(address: str, tls: Tls):
    """A Control API client (register device keys, start and stop runs) for the SuperLink at ``address``."""
    from fedhar.deploy.flower_internals import ControlHttpClient, RuntimeVersionHttpInterceptor

    insecure, ca = _verify(tls)
    version = RuntimeVersionHttpInterceptor(component_name="flwr CLI")
    return ControlHttpClient.from_server_address(address, insecure, ca, [version])


def transient_retry(max_time_s: float | None):
    """Retry connection failures and 502/503/504 for up to ``max_time_s`` (None: one attempt).

    Flower's own HTTP retry policy sends SIGINT to its process on a 401 (a stale token): right for a
    one-task process, wrong for fedhar's long-lived ones, which report the failure and carry on.
    """
    import httpx
    from fedhar.deploy.flower_internals import RetryInvoker, exponential

    if max_time_s is None:
        return None

    def give_up(e: Exception) -> bool:
        if isinstance(e, httpx.HTTPStatusError):
            return e.response.status_code not in (502, 503, 504)
        return not isinstance(e, httpx.TransportError)

    return RetryInvoker(lambda: exponential(max_delay=10), (httpx.TransportError, httpx.HTTPStatusError),
                        max_tries=None, max_time=max_time_s, should_giveup=give_up)  # fmt: skip


def runtime_client(address: str, tls: Tls, token: str | None = None, secret: bytes | None = None,
                   retry_s: float | None = 60.0):  # fmt: skip
    """A Runtime API client: with ``secret`` it may claim tasks, with ``token`` it works on one claimed task."""
    from fedhar.deploy.flower_internals import (
        RuntimeHttpClient,
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )

    interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
    if secret is not None:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=[ACQUIRE_TASK]))
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    insecure, ca = _verify(tls)
    return RuntimeHttpClient.from_server_address(address, insecure, ca, interceptors,
                                                 retry_invoker=transient_retry(retry_s))  # fmt: skip


def public_key_bytes(public_key: Path) -> bytes:
    """A device's ``.pub`` file as Flower stores and compares keys (the SuperNode signs with its private half)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from fedhar.deploy.flower_internals import public_key_to_bytes

    try:
        key = serialization.load_ssh_public_key(public_key.read_bytes())
    except (ValueError, OSError) as e:
        raise ConfigError(f"{public_key}: not an OpenSSH public key ({e}); create device keys with `fedhar certs`"
                          ) from e  # fmt: skip
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"{public_key}: SuperNode authentication needs an EC (NIST curve) key, "
                          f"got {type(key).__name__}")  # fmt: skip
    return public_key_to_bytes(key)


def register_node(control, public_key: Path) -> tuple[str, int | None]:
    """Register a device's public key (only registered devices may join): ('registered', the node id the
    SuperNode holding that key will get) or ('already registered', None)."""
    from fedhar.deploy.flower_internals import RegisterNodeRequest

    key = public_key_bytes(public_key)
    try:
        response = control.RegisterNode(RegisterNodeRequest(public_key=key, name=public_key.stem))
    except Exception as e:  # noqa: BLE001 - the Control API answers a known key with an HTTP error
        if "already" in str(getattr(getattr(e, "response", None), "text", "")).lower():
            return "already registered", None
        raise
    return "registered", int(response.node_id) if response.HasField("node_id") else None


def list_nodes(control) -> list[tuple[int, bytes]]:
    """(node id, public key) of every node the SuperLink knows (registered, online or not)."""
    from fedhar.deploy.flower_internals import ListNodesRequest

    return [(int(n.node_id), bytes(n.public_key)) for n in control.ListNodes(ListNodesRequest()).nodes_info]


def app_fab(run_config: dict[str, str]):
    """The FAB of fedhar's Flower app: pyproject plus the two app modules of this installation.

    Devices in process isolation execute their own installed fedhar, not this code; they check that the
    FAB's version is theirs. (A SuperNode in Flower's default subprocess isolation would run this FAB.)
    The app packages' files are found, not imported: fedhar does not depend on its Flower entry points.
    """
    from importlib.util import find_spec

    from fedhar.deploy.flower_internals import Fab, build_fab_from_files

    config_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in run_config.items())
    pyproject = f"""[project]
name = "{APP_NAME}"
version = "{__version__}"
description = "fedhar federated HAR (frontend + LoRA + head on a frozen LLM backbone)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "{APP_PUBLISHER}"

[tool.flwr.app.components]
serverapp = "server.app:app"
clientapp = "clients.app:app"

[tool.flwr.app.config]
{config_lines}
"""
    files: dict[str, bytes | Path] = {"pyproject.toml": pyproject.encode()}
    for package in ("server", "clients"):
        spec = find_spec(package)  # a top-level package: located without running it
        if spec is None or spec.origin is None:
            raise FedharError(f"the `{package}` package of fedhar's Flower app is not installed here; reinstall fedhar")
        folder = Path(spec.origin).parent
        files[f"{package}/__init__.py"] = folder / "__init__.py"
        files[f"{package}/app.py"] = folder / "app.py"
    content, _ = build_fab_from_files(files)
    return Fab(hashlib.sha256(content).hexdigest(), content, {})


def start_run(control, run_config: dict[str, str]) -> tuple[int, str]:
    """Submit fedhar's FAB as a run: (run id, the FAB's hash, which names the run's ServerApp task)."""
    from fedhar.deploy.flower_internals import StartRunRequest, fab_to_proto, user_config_to_proto

    fab = app_fab(run_config)
    response = control.StartRun(StartRunRequest(fab=fab_to_proto(fab),
                                                override_config=user_config_to_proto(run_config)))  # fmt: skip
    if not response.HasField("run_id"):
        raise FedharError("the SuperLink did not start the run")
    return int(response.run_id), fab.hash_str


def stop_run(control, run_id: int) -> None:
    from fedhar.deploy.flower_internals import StopRunRequest

    with contextlib.suppress(Exception):  # best effort: the run may already be over
        control.StopRun(StopRunRequest(run_id=run_id))


def acquire_task(runtime, task_type: str | None = None, fab_hash: str | None = None):
    """Claim the oldest pending task of ``task_type``, or of the FAB ``fab_hash`` whatever its type:
    (token, task), or None when there is none.

    Flower 1.42's AcquireTask hands out a task whose type is supported *or* whose FAB is listed as ready
    (``agentapp_fab_hashes``): asking by FAB leaves other apps' tasks on a shared SuperLink alone."""
    from fedhar.deploy.flower_internals import AcquireTaskRequest

    request = AcquireTaskRequest(supported_task_types=[task_type] if task_type else [],
                                 agentapp_fab_hashes=[fab_hash] if fab_hash else [])  # fmt: skip
    response = runtime.AcquireTask(request)
    if response.HasField("task") and response.token:
        return response.token, response.task
    return None


@contextlib.contextmanager
def task_heartbeat(runtime):
    """Keep a claimed task alive while fedhar works on it (Flower expires silent tasks after ~60 s)."""
    import httpx
    from fedhar.deploy.flower_internals import HeartbeatSender, SendTaskHeartbeatRequest

    def beat() -> bool:
        try:
            return bool(runtime.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except httpx.HTTPError:
            return False

    sender = HeartbeatSender(beat)
    sender.start()
    try:
        yield
    finally:
        sender.stop()


def push_task_output(runtime, context, ok: bool, details: str = "") -> None:
    from fedhar.deploy.flower_internals import PushTaskOutputRequest, SubStatus, context_to_proto

    status = SubStatus.COMPLETED if ok else SubStatus.FAILED
    with contextlib.suppress(Exception):  # the run may have ended meanwhile; nothing left to report to
        runtime.PushTaskOutput(PushTaskOutputRequest(context=context_to_proto(context) if context else None,
                                                     sub_status=status, details=details))  # fmt: skip


# ---- the ServerApp task, in the fedhar server process -------------------------------------------------


def run_server_task(address: str, tls: Tls, secret: bytes, run_id: int, fab_hash: str, main: Callable,
                    wait_s: float = 60.0):  # fmt: skip
    """Claim run ``run_id``'s ServerApp task on the SuperLink and run ``main(grid, context)`` in this process.

    Only tasks of fedhar's own FAB (``fab_hash``: it names the run folder) are claimed, so other apps' runs
    on a shared SuperLink are left to their own executors."""
    from fedhar.deploy.flower_internals import (
        PullTaskInputRequest,
        TaskIdentity,
        context_from_proto,
        run_from_proto,
        task_grid,
    )

    claimer = runtime_client(address, tls, secret=secret)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            claimed = acquire_task(claimer, fab_hash=fab_hash)
            if claimed is not None and claimed[1].run_id == run_id:
                break
            if claimed is not None:  # an earlier submission of this run folder that nobody ran: ended here
                other = runtime_client(address, tls, token=claimed[0])
                push_task_output(other, None, ok=False, details="fedhar server runs only the run it submitted")
                other.close()
            if time.monotonic() > deadline:
                raise FedharError(f"the SuperLink did not hand out run {run_id}'s ServerApp task within {wait_s:.0f} s")
            time.sleep(TASK_POLL_S)
    finally:
        claimer.close()
    insecure, ca = _verify(tls)
    # fedhar's retry policy before first use: no SIGINT on a stale token
    grid, runtime = task_grid(address, insecure, Path(ca).read_bytes() if ca else None, claimed[0],
                              transient_retry(600.0))  # fmt: skip
    context, ok, details = None, False, "fedhar server stopped"
    try:
        with task_heartbeat(runtime):
            response = runtime.PullTaskInput(PullTaskInputRequest())
            TaskIdentity.task_id, TaskIdentity.run_id = response.task_id, response.run.run_id
            TaskIdentity.node_id = response.context.node_id
            context = context_from_proto(response.context)
            grid.set_run(run_from_proto(response.run))
            result = main(grid, context)
            ok, details = True, ""
            return result
    except BaseException as e:
        details = f"{type(e).__name__}: {e}"
        raise
    finally:
        push_task_output(runtime, context, ok, details)
        grid.close()


# ---- ClientApp tasks, in the fedhar client process ---------------------------------------------------


@dataclass
class TaskReport:
    message_type: str
    group: str  # the server's round, for messages of a round
    seconds: float  # claim → task closed (the SuperNode's queueing before the claim not included)
    ok: bool
    error: str = ""
    pull_s: float = 0.0  # fetching the message, its run and context from the SuperNode
    app_s: float = 0.0  # the ClientApp handler (decode, train or score, encode)
    push_s: float = 0.0  # handing the reply and the context back


def serve_client_tasks(runtime_address: str, secret: bytes, app, stop: threading.Event,
                       on_task: Callable[[TaskReport], None] | None = None,
                       alive: Callable[[], bool] | None = None) -> None:  # fmt: skip
    """Claim the SuperNode's ClientApp tasks and run ``app`` on them in this process, one at a time.

    This is Flower's ``flwr-clientapp`` (pull the task's message, context, run; call the ClientApp; push
    the reply and the context) in a loop, so the model built on the first message serves every later one.
    A ClientApp exception becomes an error reply the server logs; the process keeps serving.
    """
    from fedhar.deploy.flower_internals import TaskType

    plain = Tls(insecure=True)  # the SuperNode's Runtime API listens on loopback only
    claimer = runtime_client(runtime_address, plain, secret=secret, retry_s=None)  # a dead SuperNode shows at once
    try:
        while not stop.is_set():
            if alive is not None and not alive():
                return
            try:
                claimed = acquire_task(claimer, TaskType.CLIENT_APP)
            except Exception as e:  # noqa: BLE001 - the SuperNode restarting; try again shortly
                log.debug("AcquireTask failed: %s", e)
                claimed = None
            if claimed is None:
                stop.wait(TASK_POLL_S)
                continue
            report = _run_client_task(runtime_address, plain, claimed[0], app)
            if on_task is not None:
                on_task(report)
    finally:
        claimer.close()


def pull_task_input(runtime):
    """The claimed task's message, context, run and FAB, as ``flwr-clientapp`` pulls them, but polling for the
    message's objects every 50-500 ms: a task is handed out while its SuperNode is still downloading the
    message, and Flower's 1 s / 2 s / 4 s backoff for that wait cost ~3 s per message here."""
    from flwr.app import Message
    from fedhar.deploy.flower_internals import (
        Node,
        PullAppMessagesRequest,
        PullTaskInputRequest,
        TaskIdentity,
        context_from_proto,
        fab_from_proto,
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
        pull_and_inflate_object_from_tree,
        run_from_proto,
    )

    task = runtime.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id = task.task_id, task.run.run_id
    TaskIdentity.node_id = task.context.node_id
    context, run, fab = context_from_proto(task.context), run_from_proto(task.run), fab_from_proto(task.fab)
    pulled = runtime.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise FedharError("the SuperNode handed out a task without a message")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(runtime.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(runtime.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=0.05, backoff_cap=0.5,
    )  # fmt: skip
    message.metadata.__dict__["_message_id"] = tree.object_id  # a deflated message does not carry its own id
    return message, context, run, fab


def _run_client_task(address: str, tls: Tls, token: str, app) -> TaskReport:
    from flwr.app import Error, Message
    from fedhar.deploy.flower_internals import ErrorCode, push_message

    t0 = time.perf_counter()
    runtime = runtime_client(address, tls, token=token)
    context, message_type, group, error = None, "?", "", ""
    times = [t0]
    try:
        with task_heartbeat(runtime):
            message, context, run, _fab = pull_task_input(runtime)
            message_type, group = message.metadata.message_type, message.metadata.group_id
            times.append(time.perf_counter())
            if run.fab_id != APP_ID or run.fab_version != __version__:
                error = (f"the server runs {run.fab_id} {run.fab_version}, this device has {APP_ID} {__version__}; "
                         "install the same fedhar version on both")  # fmt: skip
                reply = Message(Error(code=ErrorCode.LOAD_CLIENT_APP_EXCEPTION, reason=error), reply_to=message)
            else:
                try:
                    reply = app(message=message, context=context)
                except Exception as e:  # noqa: BLE001 - reported to the server as the reply, as flwr-clientapp does
                    error = f"{type(e).__name__}: {e}"
                    log.error("%s message failed: %s\n%s", message_type, error, traceback.format_exc())
                    reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=error), reply_to=message)
            times.append(time.perf_counter())
            push_message(runtime, reply, context)
    except Exception as e:  # noqa: BLE001 - a task the SuperNode withdrew (run stopped); report and go on
        error = error or f"{type(e).__name__}: {e}"
        log.warning("task failed: %s", error)
    finally:
        push_task_output(runtime, context, ok=not error, details=error)
        runtime.close()
    times.append(time.perf_counter())
    phases = [b - a for a, b in zip(times, times[1:])] if len(times) == 4 else [0.0, 0.0, 0.0]
    return TaskReport(message_type, group, times[-1] - t0, not error, error, *phases)
