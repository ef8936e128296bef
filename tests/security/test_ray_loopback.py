"""A simulation's private Ray instance listens on the loopback interface only (issue: an open Ray cluster)."""

from __future__ import annotations

import ipaddress
import os

import psutil

from fedhar.cli.main import main
from fedhar.federated import server as fed_server
from tests.federated.test_federated_sim import TINY_SIM, leftovers, process_mark  # noqa: F401 (fixture)


def listening_addresses() -> dict[str, set[str]]:
    """``{process name: addresses it listens on}`` for this process and every process it started."""
    found: dict[str, set[str]] = {}
    for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.setdefault(p.name(), set()).add(c.laddr.ip)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # '::ffff:127.0.0.1'
    return address.is_loopback


def test_private_ray_instance_listens_on_loopback_only(tmp_path, monkeypatch, process_mark):  # noqa: F811
    seen: list[dict[str, set[str]]] = []
    train_round = fed_server.RoundLoop.train_round

    def spy(self, rnd):  # sockets while the engine runs (Ray's servers, its workers, the driver's core worker)
        seen.append(listening_addresses())
        return train_round(self, rnd)

    monkeypatch.setattr(fed_server.RoundLoop, "train_round", spy)
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    out = tmp_path / "runs"
    assert main(["simulate", *TINY_SIM, f"output_dir={out}", "name=lo", "federated.rounds=1", "--quiet"]) == 0
    assert seen, "the round loop never ran"
    listening = seen[0]
    assert {"gcs_server", "raylet"} <= set(listening), f"Ray's servers were not found among {sorted(listening)}"
    exposed = {name: ips for name, ips in listening.items() if not all(is_loopback(ip) for ip in ips)}
    assert exposed == {}, f"listening beyond loopback: {exposed}"
    # the switch is restored: a later run in this process may attach to a real multi-node cluster
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == before
    import ray._private.ray_constants as ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER is True
    assert leftovers(process_mark) == []


def test_is_loopback_reads_the_forms_psutil_reports():
    assert is_loopback("127.0.0.1") and is_loopback("::ffff:127.0.0.1") and is_loopback("::1")
    assert not is_loopback("::") and not is_loopback("0.0.0.0") and not is_loopback("192.0.2.2")
