"""``fedhar client``: a device joins a federation with its own recordings; they never leave it.

The command starts a Flower SuperNode (TLS to the server, verified against the deployment's CA; the
device's private key for SuperNode authentication) and serves the SuperNode's ClientApp tasks in
this process with fedhar's ClientApp — the same handlers that simulated clients run. Which windows
the device holds is decided by ``fedhar.federated.data.client_data`` from the node config that
``--data``, ``--dataset``, ``--subjects`` and ``--name`` set.

The device keeps going when the server is away: its SuperNode retries the connection, and when the
SuperNode itself exits (the server refused the device for now, restarted without its state, or the
SuperNode gave up: ``fedhar.deploy.supernode``) it is started again after a pause. A restarted device
rejoins the federation for the next round. Why a device is not connected is said on the console in one
line (``diagnose``, ``exit_reason``), not only in ``supernode.log``.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
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
from rich.markup import escape

from fedhar.deploy.supernode import MARK
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
        from fedhar.deploy.flower_internals import parse_config_args

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


def run_client(server: str, config: dict, tls: Tls, key: Path | None, work_dir: Path,
               heartbeat_s: float | None = None) -> None:  # fmt: skip
    """Serve the federation at ``server`` until interrupted (Ctrl+C or SIGTERM)."""
    from fedhar.federated.client_app import app  # torch, transformers and the model code load once, before connecting

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
            supernode = start_supernode(server, tls, key, config, free_port(), secret_file, work_dir, heartbeat_s)
        except StartFailed as e:  # it exited while starting (e.g. refused at once): tried again like any exit
            reason = exit_reason(e.service, server, tls)
        else:
            say(f"SuperNode started (pid {supernode.pid}) for {server}; recordings {config[DATA_PATH]}")
            done = threading.Event()
            watcher = threading.Thread(target=_watch, args=(supernode, server, tls, done), daemon=True)
            watcher.start()
            try:
                serve_client_tasks(_runtime_address(supernode), secret_file.read_bytes(), app, stop,
                                   on_task=lambda report: _record(report, task_log), alive=supernode.alive)  # fmt: skip
            finally:
                done.set()
                supernode.stop()
            reason = exit_reason(supernode, server, tls)
        pause = RESTART_PAUSE_S[0] if time.monotonic() - started > 120 else min(pause * 2, RESTART_PAUSE_S[1])
        say(f"[yellow]SuperNode exited: {escape(reason)}; starting it again in {pause:.0f} s[/]")
        time.sleep(pause)


def _runtime_address(supernode: Service) -> str:
    return f"127.0.0.1:{supernode.command[supernode.command.index('--port') + 1]}"


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


JOINED = re.compile(r"SuperNode ID: (\d+)")
RETRYING = "Connection attempt failed, retrying"
CONNECTED = ("SuperNode ID:", "Connection successful", "Received successfully", "Sent successfully")


def _watch(supernode: Service, server: str, tls: Tls, done: threading.Event, hint_after_s: float = 15.0,
           check_s: float = 0.5) -> None:  # fmt: skip
    """Say when the SuperNode has joined (Flower logs its node id); when it has not after ``hint_after_s``, or
    has lost the connection since (it logs retries after its last success), say why (``diagnose``), again
    whenever the reason changes, and when the connection is back."""
    started, joined, said, was_lost = time.monotonic(), "", "", False
    while not done.is_set() and supernode.alive():
        text = supernode.log_text(64 * 1024)
        if not joined and (found := JOINED.search(text)):
            joined = found.group(1)
            say(f"joined the federation as node {joined}")
        retrying = text.rfind(RETRYING) > max(text.rfind(marker) for marker in CONNECTED)
        lost = bool(joined) and retrying
        waiting = not joined and time.monotonic() - started > hint_after_s
        if lost or waiting:
            problem = diagnose(server, tls) or _last_word(text)
            if problem != said:
                what = "lost the connection to the server" if lost else f"not connected after {hint_after_s:.0f} s"
                say(f"[yellow]{what}: {escape(problem)} (the SuperNode keeps trying)[/]")
                said, was_lost = problem, lost
            done.wait(5.0)
            continue
        if was_lost:
            say("the connection to the server is back")
        said, was_lost = "", False
        done.wait(check_s)


def _last_word(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"the SuperNode's last word: {lines[-1]}" if lines else "the SuperNode logged nothing yet"


def _plain(line: str) -> str:
    """A log line without its terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()


# ---- why a device is not connected -----------------------------------------------------------------


def diagnose(server: str, tls: Tls, timeout_s: float = 5.0) -> str | None:
    """Why a device cannot reach the SuperLink at ``server``, in one sentence; None when TCP and TLS work.

    Flower's SuperNode retries refused and unanswered connections forever, logging only "Connection attempt
    failed": this connects once itself (name lookup, TCP, the TLS handshake verified against ``--ca``, or
    with ``--insecure`` whether the server speaks TLS) to say which step fails."""
    host, port = split_address(server)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"cannot resolve `{host}` ({e.strerror}): check --server"
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return f"nothing listens at {server}: is `fedhar server` running there, with --address on that port?"
    except (socket.timeout, TimeoutError):
        return f"{server} does not answer within {timeout_s:.0f} s: a wrong address, or a firewall on the way"
    except OSError as e:
        return f"cannot connect to {server}: {e.strerror or e}"
    with sock:
        sock.settimeout(timeout_s)
        if tls.insecure:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            try:
                with context.wrap_socket(sock, server_hostname=host):
                    pass
            except (ssl.SSLError, OSError):
                return None  # no TLS there: as --insecure expects
            return "the server speaks TLS: connect with --ca (and --key) instead of --insecure"
        try:
            context = ssl.create_default_context(cafile=str(tls.ca))
        except (ssl.SSLError, OSError) as e:
            return f"--ca {tls.ca} is not a readable CA certificate ({e})"
        try:
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as e:
            return tls_problem(str(e.verify_message or e), host, tls)
        except ssl.SSLError as e:
            return tls_problem(str(e), host, tls)
        except (socket.timeout, TimeoutError):
            return f"{server} accepts connections but does not answer a TLS handshake within {timeout_s:.0f} s"
        except OSError as e:
            return f"the TLS handshake with {server} failed: {e.strerror or e}"
    return None


def tls_problem(error: str, host: str, tls: Tls) -> str:
    """A TLS error (Python's or Flower's log line) as what to do about it."""
    low = error.lower()
    if "mismatch" in low or "doesn't match" in low or "not valid for" in low:
        return (f"the server's certificate is not valid for `{host}` ({error}): reach it by a name the certificate "
                f"names, or reissue it with `fedhar certs --host {host}`")  # fmt: skip
    if "expired" in low:
        return f"the server's certificate has expired ({error}): reissue it (`fedhar certs`)"
    if "wrong_version_number" in low or "wrong version number" in low or "record layer" in low or "http_request" in low:
        return "the server does not speak TLS (started with --insecure?): use --insecure here too, or TLS on both"
    if "verify" in low or "issuer" in low or "self-signed" in low or "signature" in low:
        return (f"the server's certificate is not signed by --ca {tls.ca} ({error}): this device has another "
                "deployment's ca.crt, or the server's certificates were made anew; copy the server's ca.crt")  # fmt: skip
    return f"TLS failed: {error}"


REFUSED_KEY = ("the server refused this device's key: it is not registered (its .pub must be among `fedhar server "
               "--client-keys`), or a SuperNode with this key is still counted as connected (the same key on two "
               "devices, or this device's previous SuperNode, which the server drops within seconds)")  # fmt: skip


def exit_reason(supernode: Service, server: str | None = None, tls: Tls | None = None) -> str:
    """Why the SuperNode exited, in one line: from its log (Flower's words, and what they mean), else from
    ``diagnose``, else its exit code."""
    lines = [line for line in _plain_lines(supernode.log_tail(40)) if line]
    text = "\n".join(lines)
    said = ""
    if mark := next((line for line in reversed(lines) if line.startswith(MARK)), None):
        said = mark[len(MARK):].strip()
    elif any("Exit Code" in line for line in lines):
        at = max(i for i, line in enumerate(lines) if "Exit Code" in line)
        after = [line for line in lines[at + 1:] if not line.startswith("For more information")]
        if after and after[0].startswith("Failed to initialize the connection"):
            after = after[1:]
        said = f"{lines[at].split('ERROR :')[-1].strip()}: {after[0]}" if after else lines[at]
    else:
        for pattern in (r"\[code: \d+\].*", r"Failed to .*"):
            found = next((m for line in reversed(lines) if (m := re.search(pattern, line))), None)
            if found:
                said = found.group(0).strip()
                break
    if "Failed to activate SuperNode" in text and "[code: 2004]" in text and "SuperNode ID:" not in text:
        return f"{REFUSED_KEY} (Flower: {said})" if said else REFUSED_KEY
    if tls is not None and ("ssl" in said.lower() or "certificate" in said.lower()):
        host = split_address(server)[0] if server else "?"
        return tls_problem(said, host, tls)
    if said:
        return said
    if supernode.process.returncode == 0:
        return "the SuperLink dropped it: restarted, or this device is no longer registered"
    if server is not None and tls is not None and (problem := diagnose(server, tls)):
        return problem
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
        say(f"[yellow]{where}{report.message_type} failed: {escape(report.error)}[/]")
