"""``fedhar client``: a device joins a federation with its own recordings; they never leave it.

The command starts a Flower SuperNode (TLS to the server, verified against the deployment's CA; the
device's private key for SuperNode authentication) and serves the SuperNode's ClientApp tasks in
this process with fedhar's ClientApp — the same handlers that simulated clients run. Which windows
the device holds is decided by ``fedhar.federated.data.client_data`` from the node config that
``--data``, ``--dataset``, ``--subjects`` and ``--name`` set.

The device keeps going when the server is away: its SuperNode retries the connection, and when the
SuperNode itself exits (the server refused the device for now, or restarted without its state) it
is started again after a pause. A restarted device rejoins the federation for the next round.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

from fedhar.deploy.runtime import (
    say,
    Service,
    StartFailed,
    TaskReport,
    Tls,
    free_port,
    serve_client_tasks,
    split_address,
    start_supernode,
    write_secret,
)
from fedhar.errors import ConfigError, DataError
from fedhar.federated.client import NODE_THREADS
from fedhar.federated.data import CLIENT_NAME, DATA_PATH, DATASET, SUBJECTS

RESTART_PAUSE_S = (2.0, 60.0)  # first and longest pause before the SuperNode is started again
RESERVED = (DATA_PATH, DATASET, SUBJECTS, CLIENT_NAME, NODE_THREADS)


def node_config(data: Path, dataset: str, subjects: str | None, name: str | None, extra: str | None,
                threads: int | None) -> dict:  # fmt: skip
    """The SuperNode's node config: where the device's recordings are and how to read them."""
    config: dict = {}
    if extra:
        from flwr.common.config import parse_config_args

        config.update(parse_config_args([extra]))
        clash = [k for k in RESERVED if k in config]
        if clash:
            raise ConfigError(f"--node-config sets {clash}; use --data / --dataset / --subjects / --name instead")
    config[DATA_PATH] = str(data.expanduser().resolve())
    config[DATASET] = dataset
    if subjects:
        config[SUBJECTS] = subjects
    if name:
        config[CLIENT_NAME] = name
    if threads:
        config[NODE_THREADS] = int(threads)
    return config


def check_data(data: Path, dataset: str) -> None:
    """Fail before connecting when the recordings cannot be read at all (windowing waits for the server's config)."""
    from fedhar.data.loaders import detect_layout

    path = data.expanduser()
    if not path.exists():
        raise DataError(f"--data {path} does not exist")
    if dataset == "auto" and not (path.is_file() and path.suffix.lower() in (".csv", ".npz")):
        detect_layout(path)


def client_tls(insecure: bool, ca: Path | None, key: Path | None) -> Tls:
    if insecure:
        if key is not None:
            raise ConfigError("--key (device authentication) needs TLS; drop --insecure")
        return Tls(insecure=True)
    tls = Tls(ca=ca)
    tls.check("client")
    if key is None or not key.is_file():
        problem = "is not set" if key is None else f"{key} does not exist"
        raise ConfigError(f"the device's private key {problem}: pass --key (e.g. certs/clients/<name>.key from "
                          "`fedhar certs`; the server registers its .pub)")  # fmt: skip
    return tls


def run_client(server: str, config: dict, tls: Tls, key: Path | None, work_dir: Path) -> None:
    """Serve the federation at ``server`` until interrupted (Ctrl+C or SIGTERM)."""
    from clients.app import app  # torch, transformers and the model code load once, before connecting

    split_address(server)
    work_dir.mkdir(parents=True, exist_ok=True)
    secret_file = write_secret(work_dir / "superexec.secret")
    task_log = work_dir / "tasks.jsonl"
    if tls.insecure:
        say("[bold red]WARNING: --insecure: this device's traffic (model updates) is unencrypted and the "
                      "server is not authenticated. Use it only on a trusted test network.[/]")  # fmt: skip
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl+C: the SuperNode leaves the federation cleanly
    stop = threading.Event()
    pause = RESTART_PAUSE_S[0] / 2
    while True:
        started = time.monotonic()
        try:
            supernode = start_supernode(server, tls, key, config, free_port(), secret_file, work_dir)
        except StartFailed as e:  # it exited while starting (e.g. refused at once): tried again like any exit
            reason = _exit_reason(e.service)
        else:
            say(f"SuperNode started (pid {supernode.pid}) for {server}; recordings {config[DATA_PATH]}")
            watcher = threading.Thread(target=_announce, args=(supernode, stop), daemon=True)
            watcher.start()
            try:
                serve_client_tasks(_runtime_address(supernode), secret_file.read_bytes(), app, stop,
                                   on_task=lambda report: _record(report, task_log), alive=supernode.alive)  # fmt: skip
            finally:
                supernode.stop()
            reason = _exit_reason(supernode)
        pause = RESTART_PAUSE_S[0] if time.monotonic() - started > 120 else min(pause * 2, RESTART_PAUSE_S[1])
        say(f"[yellow]SuperNode exited ({reason}); starting it again in {pause:.0f} s[/]")
        time.sleep(pause)


def _runtime_address(supernode: Service) -> str:
    return f"127.0.0.1:{supernode.command[supernode.command.index('--port') + 1]}"


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _announce(supernode: Service, stop: threading.Event, hint_after_s: float = 15.0) -> None:
    """Say once when the SuperNode has joined (Flower logs its node id), or why it has not yet."""
    started, hinted = time.monotonic(), False
    while not stop.is_set() and supernode.alive():
        tail = supernode.log_tail(200)
        found = re.search(r"SuperNode ID: (\d+)", tail)
        if found:
            say(f"joined the federation as node {found.group(1)}")
            return
        if not hinted and time.monotonic() - started > hint_after_s:
            last = _plain(tail.splitlines()[-1]) if tail.strip() else "nothing logged"
            say(f"[yellow]not connected after {hint_after_s:.0f} s (is `fedhar server` running at --server, and "
                f"reachable from here?); the SuperNode's last word: {last}[/]")  # fmt: skip
            hinted = True
        time.sleep(0.5)


def _plain(line: str) -> str:
    """A log line without its terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()


def _exit_reason(supernode: Service) -> str:
    """Why the SuperNode exited, from the end of its log: Flower's exit code with the sentence after it."""
    tail = _plain_lines(supernode.log_tail(12))
    for i in range(len(tail) - 1, -1, -1):
        if code := re.search(r"Exit Code: \d+", tail[i]):
            after = next((line for line in tail[i + 1:] if line), "")
            return code.group(0) + (f": {after}" if after else "")
    for pattern in (r"\[code: \d+\].*", r"Failed to .*"):
        found = next((m for line in reversed(tail) if (m := re.search(pattern, line))), None)
        if found:
            return found.group(0).strip()
    if supernode.process.returncode == 0:
        return "the SuperLink dropped it: restarted, or this device is no longer registered"
    return f"exit code {supernode.process.returncode}; see {supernode.log_path}"


def _plain_lines(text: str) -> list[str]:
    return [_plain(line) for line in text.splitlines()]


def _record(report: TaskReport, task_log: Path) -> None:
    """One line per message on the console and in ``tasks.jsonl`` (timings for benchmarks)."""
    with task_log.open("a") as f:
        f.write(json.dumps({"time": time.time(), **asdict(report)}) + "\n")
    where = f"round {report.group}: " if report.group else ""
    if report.ok:
        say(f"{where}{report.message_type} answered in {report.seconds:.1f} s")
    else:
        say(f"[yellow]{where}{report.message_type} failed: {report.error}[/]")
