"""``fedhar client``: join a federation from a device with its own recordings (a Flower SuperNode)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "client",
        help="join a federation from this device with its own recordings (Flower SuperNode)",
        description="Connects this device to `fedhar server` and trains on its own recordings when the server "
        "asks; the recordings never leave the device, only trainable tensors and metrics do. Runs until "
        "Ctrl+C / SIGTERM, reconnecting when the server goes away.",
    )
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the server's address, e.g. 192.168.1.10:9092")
    p.add_argument("--data", required=True, type=Path, metavar="PATH",
                   help="this device's recordings: a dataset folder (any supported layout), a folder of CSV files, "
                   "one CSV of raw samples, or an .npz window set")  # fmt: skip
    p.add_argument("--dataset", default="auto", help="layout of --data (a loader name; default: detected)")
    p.add_argument("--subjects", nargs="+", metavar="ID", help="use only these subjects of the recordings, e.g. 1 3")
    p.add_argument("--name", help="this client's name in the results with --insecure (default <host>-<folder>"
                   "[-s<subjects>]); with device keys the server names a device by the key it registered")  # fmt: skip
    p.add_argument("--node-config", metavar="'KEY=VALUE ...'", help="extra Flower node config entries")
    p.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate that signed the server's (certs/ca.crt)")
    p.add_argument("--key", type=Path, metavar="FILE", help="this device's private key (certs/clients/<name>.key)")
    p.add_argument("--insecure", action="store_true", help="no TLS, no device authentication (test networks only)")
    p.add_argument("--threads", type=int, help="torch threads for local training (default: the server config's "
                   "train.num_threads, else federated.cpus_per_client)")  # fmt: skip
    p.add_argument("--heartbeat", type=float, metavar="S",
                   help="SuperNode heartbeat interval in seconds, 10-1800 (default 10; Flower's own default is 30): "
                   "the server counts a device that died as gone 2 intervals after its last heartbeat")  # fmt: skip
    p.add_argument("--work-dir", type=Path, help="SuperNode log, task timings (default: $FEDHAR_CACHE/client/<id>)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedhar.cache import cache_root
    from fedhar.deploy.client import check_data, client_tls, node_config, run_client
    from fedhar.deploy.runtime import quiet_flower
    from fedhar.deploy.supernode import HEARTBEAT_RANGE_S
    from fedhar.errors import ConfigError

    quiet_flower(args.verbose)
    if args.heartbeat is not None and not HEARTBEAT_RANGE_S[0] <= args.heartbeat <= HEARTBEAT_RANGE_S[1]:
        raise ConfigError(f"--heartbeat must be within {HEARTBEAT_RANGE_S[0]:.0f}-{HEARTBEAT_RANGE_S[1]:.0f} s "
                          "(the range Flower's SuperLink accepts)")  # fmt: skip
    check_data(args.data, args.dataset)
    tls = client_tls(args.insecure, args.ca, args.key)
    name = args.name or (args.key.stem if args.key else None)  # the name its key was registered under
    subjects = ",".join(args.subjects) if args.subjects else None
    config = node_config(args.data, args.dataset, subjects, name, args.node_config, args.threads)
    ident = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:12]
    run_client(args.server, config, tls, args.key, args.work_dir or cache_root() / "client" / ident, args.heartbeat)
    return 0
