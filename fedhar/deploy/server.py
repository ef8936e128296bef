"""``fedhar server``: a SuperLink for real devices and the fedhar round loop on it.

1. start ``flower-superlink`` (TLS with the given certificates and SuperNode authentication, unless
   ``--insecure``; process isolation; its state in memory, its log in the run folder), or use a running one;
2. register the devices' public keys (only registered devices can join);
3. submit the run (fedhar's FAB) through the Control API and claim its ServerApp task (by the FAB's hash:
   other apps' tasks on a shared SuperLink are left alone);
4. run ``run_federation`` — the same round loop as ``fedhar simulate`` — in this process, on Flower's
   HTTP Grid, writing results to ``runs/<name>/`` as a simulation does.

**Who is who.** With device keys, a device's name in the results is the name of the key it authenticated
with (``certs/clients/<name>.pub`` → ``<name>``), not the ``--name`` it claims: ``NodeIdentity`` maps the
SuperLink's node ids to key names (see there). With ``--insecure`` there are no keys and the claimed names stay.

A restarted server (``--resume RUN_DIR``) starts a fresh SuperLink, registers the device keys again and
continues from the last completed round's checkpoint; the devices' ``fedhar client`` notices that the
SuperLink forgot its SuperNode, starts the SuperNode again and rejoins.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedhar.config import ExperimentConfig
from fedhar.deploy import certs
from fedhar.deploy.runtime import (
    say,
    Service,
    Tls,
    control_client,
    join_address,
    list_nodes,
    local_address,
    public_key_bytes,
    register_node,
    run_server_task,
    split_address,
    start_run,
    start_superlink,
    stop_run,
    write_secret,
)
from fedhar.errors import ConfigError
from fedhar.results.run import RunDir

DEFAULT_ADDRESS = "127.0.0.1:9092"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerOptions:
    address: str = DEFAULT_ADDRESS  # where the SuperLink listens (devices and fedhar's own Runtime API client)
    certs: Path | None = None  # folder with ca.crt, server.crt, server.key (`fedhar certs`)
    client_keys: list[Path] = field(default_factory=list)  # device public keys (.pub files or folders of them)
    insecure: bool = False
    superlink: str | None = None  # use this running SuperLink instead of starting one
    superexec_secret: Path | None = None  # the running SuperLink's --superexec-auth-secret-file
    wait_for_clients: int | None = None  # connected clients before the setup round (default: min_clients)


def check_deployable(cfg: ExperimentConfig) -> None:
    """Config rules for devices that window their own recordings (and no simulated attack)."""
    if cfg.federated.attack is not None:
        raise ConfigError("federated.attack is for simulation benchmarks only (fedhar simulate): remove it from a "
                          "deployment's config")  # fmt: skip
    if not cfg.data.classes:
        raise ConfigError("set `data.classes` (the activities, in the model's order): each device maps its own "
                          "recordings onto that list")  # fmt: skip
    if cfg.data.sample_rate is None:
        raise ConfigError("set `data.sample_rate`: devices record at different rates and must resample to one")
    from fedhar.data.loaders import check_data_path

    check_data_path(cfg.data.dataset, cfg.data.path)  # the server scores the held-out subjects on its own copy


def server_tls(opts: ServerOptions) -> Tls:
    if opts.insecure:
        return Tls(insecure=True)
    folder = opts.certs
    if folder is None:
        raise ConfigError("TLS is on by default: pass --certs DIR (ca.crt, server.crt, server.key; a test "
                          "deployment's come from `fedhar certs --out DIR`), or --insecure explicitly")  # fmt: skip
    if opts.superlink is not None:  # someone else's SuperLink: fedhar only verifies it
        tls = Tls(ca=folder / certs.CA_CERT)
        tls.check("client")
        return tls
    tls = Tls(ca=folder / certs.CA_CERT, cert=folder / certs.SERVER_CERT, key=folder / certs.SERVER_KEY)
    tls.check("server")
    return tls


def public_keys(paths: list[Path]) -> list[Path]:
    """``.pub`` files named directly or found in the named folders."""
    keys: list[Path] = []
    for path in paths:
        if path.is_dir():
            keys += sorted(path.glob("*.pub"))
        elif path.is_file():
            keys.append(path)
        else:
            raise ConfigError(f"--client-keys {path}: no such file or folder")
    return keys


class NodeIdentity:
    """node id → the name of the registered device key that node authenticated with (``None``: not one of ours).

    How Flower 1.42 binds them (SuperLink with ``--enable-supernode-auth``): the Control API's ``RegisterNode``
    creates the node in the SuperLink's state with the device's public key and answers its node id; a
    SuperNode joins with ``ActivateNode`` carrying its public key, and the SuperLink activates the node
    *registered under that key* (``get_node_id_by_public_key``), so the SuperNode gets exactly that id; every
    later Fleet request is signed with the key's private half and refused unless the signing key is the one
    registered for the node id it names (``NodeAuthMiddleware``). So a node id is as good as the key:
    ``fedhar server`` records the id ``RegisterNode`` answers for each key file, and for keys that were
    already registered (a running SuperLink) looks the key up in the Control API's ``ListNodes`` (node id +
    public key). A node whose key is none of ``--client-keys`` is looked up again (at most every
    ``REFRESH_S``); still unknown, it is named ``node-<id>`` on fedhar's own SuperLink (whose registry only
    ``fedhar server`` fills, so it can never take a key's name), and keeps the name it claims on a shared
    SuperLink (``--superlink``: other parties' devices, or one without device authentication, whose nodes
    all carry throwaway keys).

    Limits: ids live as long as the SuperLink's state (fedhar's SuperLink keeps it in memory, so a restarted
    server registers again and learns new ids); the name is the key file's stem on the server, so whoever
    holds a device's private key *is* that device; the Control API itself is unauthenticated in the
    open-source SuperLink (docs/deploy.md → Security): someone who reaches it could unregister a key and
    register their own under the same node name, which this mapping would not see (it trusts the SuperLink).
    """

    REFRESH_S = 5.0

    def __init__(self, control, keys: dict[bytes, str], unknown_claims: bool = False):
        self.control, self.keys = control, keys  # public key bytes → device name
        self.unknown_claims = unknown_claims  # a node of another key: its claimed name (None) or node-<id>
        self.names: dict[int, str] = {}
        self._lock, self._refreshed = threading.Lock(), float("-inf")

    @classmethod
    def register(cls, control, key_files: list[Path], unknown_claims: bool = False) -> NodeIdentity:
        """Register every key file (saying so) and learn the node id each one gets."""
        keys: dict[bytes, str] = {}
        for path in key_files:
            key = public_key_bytes(path)
            if key in keys:
                raise ConfigError(f"{path} is the same key as {keys[key]}.pub: each device needs its own key pair")
            if path.stem in keys.values():
                raise ConfigError(f"two key files are named {path.stem}.pub: a device's name is its key's name")
            keys[key] = path.stem
        identity = cls(control, keys, unknown_claims)
        for path in key_files:
            status, node_id = register_node(control, path)
            say(f"device key {path.name}: {status}")
            if node_id is not None:
                identity.names[node_id] = path.stem
        if len(identity.names) < len(key_files):
            identity.refresh()
        return identity

    def refresh(self) -> None:
        with self._lock:
            self._refreshed = time.monotonic()
            for node_id, key in list_nodes(self.control):
                if key in self.keys:
                    self.names[node_id] = self.keys[key]

    def __call__(self, node_id: int) -> str | None:
        name = self.names.get(node_id)
        if name is None and time.monotonic() - self._refreshed > self.REFRESH_S:
            self.refresh()
            name = self.names.get(node_id)
        if name is None and not self.unknown_claims:
            name = f"node-{node_id}"
        return name


def preflight(cfg: ExperimentConfig, opts: ServerOptions) -> tuple[ExperimentConfig, Tls, list[Path]]:
    """Every check that can fail before a run folder or a process exists: config, TLS files, device keys."""
    from fedhar import posthoc
    from fedhar.federated.aggregation import check_strategy

    cfg = check_strategy(cfg)
    posthoc.configured(cfg)  # an unknown post-hoc adapter or option
    check_deployable(cfg)
    host, _ = split_address(opts.superlink or opts.address)
    tls, keys = server_tls(opts), public_keys(opts.client_keys)
    if tls.cert is not None and local_address(host) not in certs.server_certificate_hosts(tls.cert):
        raise ConfigError(f"{tls.cert} is not valid for {local_address(host)} (it names "
                          f"{certs.server_certificate_hosts(tls.cert)}); recreate it with "
                          "`fedhar certs --host ...`")  # fmt: skip
    if not tls.insecure and not keys and opts.superlink is None:
        # the SuperLink fedhar starts keeps its registry in memory: with no key registered, nobody could join
        raise ConfigError("no device keys: pass --client-keys (the .pub files or folder from `fedhar certs`, e.g. "
                          "certs/clients); only registered devices may join")  # fmt: skip
    return cfg, tls, keys


def serve(cfg: ExperimentConfig, run: RunDir, opts: ServerOptions, resume: bool = False,
          progress: bool = True) -> dict:  # fmt: skip
    """Run (or resume) the federation ``cfg`` on real devices; returns the ``metrics.json`` summary."""
    from fedhar.federated.server import ServerJob, run_federation
    from fedhar.federated.transport import DEPLOY_POLL_S

    cfg, tls, keys = preflight(cfg, opts)
    host, port = split_address(opts.superlink or opts.address)
    listen = join_address(host, port)
    if tls.insecure:
        say("[bold red]WARNING: --insecure: traffic is unencrypted and any device that reaches "
                      f"{listen} can join the federation. Use it only on a trusted test network.[/]")  # fmt: skip
    if host not in LOOPBACK:
        say(f"[yellow]the SuperLink's Control API shares {listen} with the devices and Flower 1.42 does "
                      "not authenticate it: expose only /v1/fleet/ to devices (see docs/deploy.md)[/]")  # fmt: skip

    link_dir = run.file("superlink")  # its log and the AcquireTask secret
    link: Service | None = None
    if opts.superlink is None:
        secret_file = write_secret(link_dir / "superexec.secret")
        link = start_superlink(host, port, tls, secret_file, link_dir)
    elif opts.superexec_secret is None or not opts.superexec_secret.is_file():
        raise ConfigError("--superlink needs --superexec-secret FILE: the secret the running SuperLink was "
                          "started with (--superexec-auth-secret-file), so that fedhar may claim its ServerApp "
                          "task")  # fmt: skip
    else:
        secret_file = opts.superexec_secret
    address = join_address(local_address(host), port)
    run_id = None
    control = control_client(address, tls)
    try:
        identity = None if tls.insecure else NodeIdentity.register(control, keys, unknown_claims=link is None)
        run_id, fab_hash = start_run(control, {"run-dir": str(run.path.resolve())})
        # a running SuperLink's --enable-supernode-auth is its own setting, unknown here: recorded as null
        auth = None if opts.superlink else not tls.insecure
        run.update_json("run.json", flower={"run_id": run_id, "superlink": address, "tls": not tls.insecure,
                                            "supernode_auth": auth})  # fmt: skip
        mode = "INSECURE" if tls.insecure else "TLS, registered devices only" if auth else "TLS"
        waiting = opts.wait_for_clients or cfg.federated.min_clients
        say(f"SuperLink {listen} ({mode}), Flower run {run_id}; waiting for {waiting} clients…")
        job = ServerJob(cfg, run, resume=resume, expected_nodes=opts.wait_for_clients, progress=progress,
                        poll_interval_s=DEPLOY_POLL_S, node_names=identity)  # fmt: skip
        return run_server_task(address, tls, secret_file.read_bytes(), run_id, fab_hash,
                               lambda grid, _: run_federation(grid, job))  # fmt: skip
    finally:
        if run_id is not None and link is None:
            stop_run(control, run_id)  # a shared SuperLink: leave no run of ours behind
        control.close()
        if link is not None:
            link.stop()
