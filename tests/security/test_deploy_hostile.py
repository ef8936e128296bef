"""Deployment hardening (issue #20): device names bound to device keys, a SuperNode that gives up exits,
a refused connection is explained in one line, the heartbeat is shorter.

The first tests run Flower's own handlers and TLS on loopback sockets, without Flower processes; the
``slow`` ones start a SuperLink and SuperNodes (no torch, no fedhar client).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import types
from pathlib import Path

import pytest

from fedhar.deploy.certs import create_test_deployment
from fedhar.deploy.runtime import Tls


# ---- A. a node's name is its key's ----------------------------------------------------------------------


class FlowerControl:
    """The Control API's RegisterNode / ListNodes handlers on Flower's in-memory LinkState (no accounts, as
    the open-source SuperLink runs), erring as its HTTP client does (an error whose response text says why)."""

    def __init__(self):
        from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
        from flwr.server.superlink.linkstate import LinkStateFactory
        from flwr.supercore.auth.typing import AccountInfo
        from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
        from flwr.supercore.object_store import ObjectStoreFactory
        from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager

        self.state = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()).state()
        self.account = AccountInfo(flwr_aid=NOOP_FLWR_AID, account_name=NOOP_ACCOUNT_NAME)
        self.list_calls = 0

    def _call(self, handler, request):
        from flwr.supercore.error import FlowerError

        try:
            return handler(request, self.account, self.state)
        except FlowerError as e:
            error = RuntimeError(str(e))
            error.response = types.SimpleNamespace(text=str(e))
            raise error from e

    def RegisterNode(self, request):  # noqa: N802 - Flower's method names
        from flwr.superlink.servicer.control.control_handlers import register_node

        return self._call(register_node, request)

    def ListNodes(self, request):  # noqa: N802
        from flwr.superlink.servicer.control.control_handlers import list_nodes

        self.list_calls += 1
        return self._call(list_nodes, request)

    def activate(self, pub: Path) -> int:
        """What the SuperLink answers a SuperNode that joins with this key (Fleet ActivateNode)."""
        from flwr.proto.fleet_pb2 import ActivateNodeRequest
        from flwr.superlink.servicer.fleet.fleet_handlers import activate_node

        from fedhar.deploy.runtime import public_key_bytes

        request = ActivateNodeRequest(public_key=public_key_bytes(pub), heartbeat_interval=10)
        return activate_node(request, self.state).node_id


def test_a_nodes_name_is_the_key_it_joined_with_not_the_name_it_claims(tmp_path, capsys):
    from fedhar.deploy.server import NodeIdentity

    create_test_deployment(tmp_path, None, ["phone-1", "phone-2", "outsider"])
    keys = tmp_path / "clients"
    control = FlowerControl()
    identity = NodeIdentity.register(control, [keys / "phone-1.pub", keys / "phone-2.pub"])
    assert "device key phone-1.pub: registered" in capsys.readouterr().err
    # the SuperNode holding phone-2's private key gets the node id RegisterNode answered for phone-2.pub
    node2, node1 = control.activate(keys / "phone-2.pub"), control.activate(keys / "phone-1.pub")
    assert identity(node1) == "phone-1" and identity(node2) == "phone-2"
    assert control.list_calls == 0  # fresh registrations answer their node ids: no lookup needed

    # a key registered behind fedhar's back (the unauthenticated Control API) never takes a device's name
    from fedhar.deploy.runtime import register_node

    _, foreign = register_node(control, keys / "outsider.pub")
    assert identity(foreign) == f"node-{foreign}"
    assert NodeIdentity(control, identity.keys, unknown_claims=True)(foreign) is None  # shared SuperLink: claimed

    # keys already registered (a running SuperLink): their node ids come from ListNodes, by public key
    control.list_calls = 0
    again = NodeIdentity.register(control, [keys / "phone-2.pub", keys / "phone-1.pub"])
    assert "already registered" in capsys.readouterr().err
    assert again(node1) == "phone-1" and again(node2) == "phone-2" and control.list_calls == 1


def test_one_key_under_two_names_or_two_keys_under_one_name_is_refused(tmp_path):
    from fedhar.deploy.server import NodeIdentity
    from fedhar.errors import ConfigError

    create_test_deployment(tmp_path / "a", None, ["phone-1"])
    create_test_deployment(tmp_path / "b", None, ["phone-1"])
    copy = tmp_path / "phone-9.pub"
    copy.write_bytes((tmp_path / "a" / "clients" / "phone-1.pub").read_bytes())
    with pytest.raises(ConfigError, match="same key"):
        NodeIdentity.register(FlowerControl(), [tmp_path / "a" / "clients" / "phone-1.pub", copy])
    with pytest.raises(ConfigError, match="two key files are named phone-1.pub"):
        NodeIdentity.register(FlowerControl(), [tmp_path / "a" / "clients" / "phone-1.pub",
                                                tmp_path / "b" / "clients" / "phone-1.pub"])  # fmt: skip


def test_the_server_passes_the_identity_to_the_round_loop_with_keys_and_none_without(tmp_path, monkeypatch):
    from fedhar.deploy import server
    from fedhar.deploy.server import NodeIdentity, ServerOptions, serve
    from fedhar.results.run import RunDir
    from tests.deploy.test_deploy import device_cfg

    jobs = []
    monkeypatch.setattr(server, "control_client", lambda address, tls: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(server, "start_run", lambda control, config: (7, "f" * 64))
    monkeypatch.setattr(server, "stop_run", lambda control, run_id: None)
    monkeypatch.setattr(server, "run_server_task", lambda *args: jobs.append(args[-1]) or {"wall_seconds": 0})
    monkeypatch.setattr(NodeIdentity, "register", classmethod(lambda cls, control, keys, unknown_claims: "ID"))
    import fedhar.federated.server as fs

    made = []
    monkeypatch.setattr(fs, "ServerJob", lambda *args, **kw: made.append(kw) or kw)
    secret = tmp_path / "s"
    secret.write_text("s")
    cfg = device_cfg(f"output_dir={tmp_path}", "name=x", "data.sample_rate=50")
    create_test_deployment(tmp_path / "certs", None, ["c1"])
    tls = ServerOptions(superlink="127.0.0.1:9092", superexec_secret=secret, certs=tmp_path / "certs",
                        client_keys=[tmp_path / "certs" / "clients"])  # fmt: skip
    serve(cfg, RunDir.create(cfg, kind="server"), tls, progress=False)
    serve(cfg, RunDir.create(device_cfg(f"output_dir={tmp_path}", "name=y", "data.sample_rate=50"), kind="server"),
          ServerOptions(superlink="127.0.0.1:9092", superexec_secret=secret, insecure=True), progress=False)
    assert [kw["node_names"] for kw in made] == ["ID", None]


# ---- B. a refused connection says why, in one line ------------------------------------------------------


class OneShotServer:
    """Accepts connections on loopback and, per connection, does a TLS handshake with ``context`` (or answers
    plain HTTP), then closes."""

    def __init__(self, context: ssl.SSLContext | None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port, self.context, self.stop = self.sock.getsockname()[1], context, threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    if self.context is None:
                        conn.recv(4096)
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    else:
                        with self.context.wrap_socket(conn, server_side=True):
                            pass
                except (OSError, ssl.SSLError):
                    pass

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _tls_server(folder: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.crt", folder / "server.key")
    return context


@pytest.fixture
def deployments(tmp_path):
    create_test_deployment(tmp_path / "ours", None, [])
    create_test_deployment(tmp_path / "other", None, [])
    create_test_deployment(tmp_path / "lan", ["edge.lan"], [])  # a certificate that names only edge.lan
    return tmp_path


def test_diagnose_names_the_step_that_fails(deployments):
    from fedhar.deploy.client import diagnose
    from fedhar.deploy.runtime import free_port

    ours, other = Tls(ca=deployments / "ours" / "ca.crt"), Tls(ca=deployments / "other" / "ca.crt")
    assert "nothing listens at 127.0.0.1:" in diagnose(f"127.0.0.1:{free_port()}", ours)
    assert "cannot resolve `no-such-host.invalid`" in diagnose("no-such-host.invalid:9092", ours)
    servers = {name: OneShotServer(_tls_server(deployments / name)) for name in ("ours", "lan")}
    servers["plain"] = OneShotServer(None)
    try:
        at = {name: f"127.0.0.1:{s.port}" for name, s in servers.items()}
        assert diagnose(at["ours"], ours) is None
        assert "not signed by --ca" in diagnose(at["ours"], other)  # another deployment's ca.crt
        lan = Tls(ca=deployments / "lan" / "ca.crt")
        assert "not valid for `127.0.0.1`" in diagnose(at["lan"], lan) and "--host 127.0.0.1" in diagnose(at["lan"], lan)
        assert "does not speak TLS" in diagnose(at["plain"], ours)
        assert "speaks TLS" in diagnose(at["ours"], Tls(insecure=True))
        assert diagnose(at["plain"], Tls(insecure=True)) is None
    finally:
        for s in servers.values():
            s.close()


def _node(log: str, returncode: int = 1):
    return types.SimpleNamespace(log_tail=lambda n: log, process=types.SimpleNamespace(returncode=returncode),
                                 log_path="supernode.log")  # fmt: skip


# the ends of real SuperNode logs (Flower 1.42, colours stripped), from loopback runs
UNREGISTERED = """INFO :      Starting Flower SuperNode
ERROR :     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[code: 2004] Failed to activate SuperNode.
The SuperNode could not establish a connection to the SuperLink.

For more information, visit: <https://flower.ai/docs/framework/1.42/en/ref-exit-codes/305.html>
"""
WRONG_CA = """ERROR :     SSL/TLS handshake error detected.
ERROR :     Exit Code: 305
Failed to initialize the connection to the SuperLink.
[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate signature failure (_ssl.c:1006)
The SuperNode could not establish a connection to the SuperLink.
"""
NOT_TLS = WRONG_CA.replace("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate signature "
                           "failure", "[SSL: WRONG_VERSION_NUMBER] wrong version number")  # fmt: skip
GAVE_UP = """INFO :      SuperNode ID: 10890890404209534631
ERROR :     SSL/TLS handshake error detected.
WARNING :   Giving up reconnection after 6.44 seconds and 5 tries.
ERROR :     [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate signature failure (_ssl.c:1006)
fedhar-supernode: the connection to the SuperLink ended ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate signature failure (_ssl.c:1006)); exiting
"""


def test_a_refused_supernode_is_explained_in_one_line_with_what_to_do():
    from fedhar.deploy.client import REFUSED_KEY, exit_reason

    tls = Tls(ca=Path("certs/ca.crt"))
    refused = exit_reason(_node(UNREGISTERED), "127.0.0.1:9092", tls)
    assert refused.startswith(REFUSED_KEY) and "--client-keys" in refused and "[code: 2004]" in refused
    wrong_ca = exit_reason(_node(WRONG_CA), "127.0.0.1:9092", tls)
    assert "not signed by --ca certs/ca.crt" in wrong_ca and "CERTIFICATE_VERIFY_FAILED" in wrong_ca
    assert "does not speak TLS" in exit_reason(_node(NOT_TLS), "127.0.0.1:9092", tls)
    gave_up = exit_reason(_node(GAVE_UP, returncode=75), "127.0.0.1:9092", tls)
    assert "not signed by --ca" in gave_up and "\n" not in gave_up
    assert all("\n" not in r for r in (refused, wrong_ca))


# ---- B. a SuperNode that gives up exits; C. its heartbeat --------------------------------------------------


@pytest.fixture
def wrapper(monkeypatch):
    """fedhar.deploy.supernode.main with Flower's SuperNode replaced, os._exit raising, Flower's constants and
    the thread hook restored afterwards."""
    import importlib

    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection

    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")  # the package's attribute is the function

    from fedhar.deploy import supernode

    monkeypatch.setattr(connection, "HEARTBEAT_DEFAULT_INTERVAL", connection.HEARTBEAT_DEFAULT_INTERVAL)
    monkeypatch.setattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL", heartbeat.HEARTBEAT_DEFAULT_INTERVAL)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(supernode.sys, "argv", list(supernode.sys.argv))

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr(supernode.os, "_exit", exit_)
    calls = types.SimpleNamespace(argv=None, body=lambda: None)

    def fake_supernode():
        calls.argv = list(supernode.sys.argv)
        calls.body()

    monkeypatch.setattr(cli, "flower_supernode", fake_supernode)
    return types.SimpleNamespace(module=supernode, calls=calls, connection=connection, heartbeat=heartbeat)


def test_a_supernode_whose_connection_loop_ends_exits_with_the_reason(wrapper, capsys, monkeypatch):
    from flwr.supercore import log

    from fedhar.deploy.supernode import EXIT_GAVE_UP, MARK

    def gives_up():  # what Flower does on an error it does not retry: log it, return, idle on forever
        log(40, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")

    wrapper.calls.body = gives_up
    monkeypatch.setattr(logging.getLogger("flwr"), "level", logging.CRITICAL)  # as a quiet simulation leaves it
    with pytest.raises(SystemExit) as exited:
        wrapper.module.main(["--heartbeat-interval", "12", "--superlink", "127.0.0.1:9092", "--insecure"])
    assert exited.value.code == EXIT_GAVE_UP
    assert wrapper.calls.argv == ["flower-supernode", "--superlink", "127.0.0.1:9092", "--insecure"]
    err = capsys.readouterr().err
    assert f"{MARK} the connection to the SuperLink ended ([SSL: CERTIFICATE_VERIFY_FAILED]" in err
    # the interval is the one the SuperNode announces (ActivateNode, heartbeats) and sends by
    assert wrapper.connection.HEARTBEAT_DEFAULT_INTERVAL == 12 and wrapper.heartbeat.HEARTBEAT_DEFAULT_INTERVAL == 12


def test_a_dead_supernode_thread_ends_the_process_and_the_heartbeat_stays_in_flowers_range(wrapper, capsys):
    from flwr.common import constant

    from fedhar.deploy.supernode import DEFAULT_HEARTBEAT_S, EXIT_THREAD_DIED, HEARTBEAT_RANGE_S

    assert HEARTBEAT_RANGE_S == (constant.HEARTBEAT_MIN_INTERVAL, constant.HEARTBEAT_MAX_INTERVAL)
    assert constant.HEARTBEAT_PATIENCE == 2  # offline 2 intervals after the last heartbeat (docs/deploy.md)
    codes = []

    def heartbeat_dies():
        wrapper.module.os._exit = codes.append  # record instead of raising in the dying thread
        thread = threading.Thread(target=lambda: (_ for _ in ()).throw(RuntimeError("Heartbeat failed")),
                                  name="heartbeat")  # fmt: skip
        thread.start()
        thread.join()

    wrapper.calls.body = heartbeat_dies
    wrapper.module.main(["--superlink", "127.0.0.1:9092"])
    assert codes[0] == EXIT_THREAD_DIED and "thread (heartbeat) died: RuntimeError: Heartbeat failed" in capsys.readouterr().err
    assert wrapper.connection.HEARTBEAT_DEFAULT_INTERVAL == DEFAULT_HEARTBEAT_S
    with pytest.raises(SystemExit, match="within 10-1800 s"):
        wrapper.module.main(["--heartbeat-interval", "5"])


def test_fedhar_client_refuses_a_heartbeat_flower_would_refuse(tmp_path, capsys):
    from fedhar.cli.main import main
    from tests.deploy.test_deploy import write_device_csv

    csv = write_device_csv(tmp_path / "rec.csv", ["1"])
    assert main(["client", "--server", "127.0.0.1:9", "--data", str(csv), "--insecure", "--heartbeat", "5"]) == 2
    assert "--heartbeat must be within 10-1800 s" in capsys.readouterr().err


# ---- B, on loopback: Flower's SuperLink and SuperNode processes ---------------------------------------------


@pytest.mark.slow
def test_a_supernode_that_gives_up_exits_instead_of_idling(tmp_path, process_mark):  # noqa: F811
    """Reproduced with Flower's own SuperNode: the server comes back with a certificate the device does not trust;
    Flower's SuperNode logged the TLS error and stayed alive, connected to nothing. fedhar's exits (and
    ``fedhar client`` would start it again, saying why)."""
    from fedhar.deploy import runtime as rt
    from fedhar.deploy.supernode import EXIT_GAVE_UP, MARK
    from tests.federated.test_federated_sim import leftovers

    create_test_deployment(tmp_path / "certs", None, ["c1"])
    c, port = tmp_path / "certs", rt.free_port()

    def superlink(tag: str):
        tls = Tls(ca=c / "ca.crt", cert=c / "server.crt", key=c / "server.key")
        link = rt.start_superlink("127.0.0.1", port, tls, rt.write_secret(tmp_path / tag / "s"), tmp_path / tag)
        control = rt.control_client(f"127.0.0.1:{port}", tls)
        rt.register_node(control, c / "clients" / "c1.pub")
        control.close()
        return link

    procs = [superlink("link1")]
    try:
        node = rt.start_supernode(f"127.0.0.1:{port}", Tls(ca=c / "ca.crt"), c / "clients" / "c1.key", {},
                                  rt.free_port(), rt.write_secret(tmp_path / "n" / "s"), tmp_path / "n")  # fmt: skip
        procs.append(node)
        deadline = time.monotonic() + 60
        while "SuperNode ID:" not in node.log_text():
            assert time.monotonic() < deadline and node.alive(), node.log_tail(20)
            time.sleep(0.2)
        procs[0].process.kill()  # the server machine dies ...
        procs[0].process.wait()
        create_test_deployment(c, None, [], overwrite=True)  # ... and comes back with a new CA and certificate
        procs.append(superlink("link2"))
        assert node.process.wait(90) == EXIT_GAVE_UP, node.log_tail(20)
        assert MARK in node.log_tail(3) and "CERTIFICATE_VERIFY_FAILED" in node.log_tail(3)
    finally:
        for p in reversed(procs):
            p.stop()
    assert leftovers(process_mark) == []


from tests.federated.test_federated_sim import process_mark  # noqa: E402,F401 - fixture


def test_a_deployment_refuses_a_simulated_attack():
    from fedhar.config import load_config
    from fedhar.deploy.server import check_deployable
    from fedhar.errors import ConfigError

    cfg = load_config(None, ["data.classes=[a, b]", "federated.attack.kind=scale"])
    with pytest.raises(ConfigError, match="for simulation benchmarks only"):
        check_deployable(cfg)
