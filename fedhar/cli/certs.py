"""``fedhar certs``: a CA, the SuperLink's TLS certificate and device keys for a test deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedhar.cli.common import console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "certs",
        help="create a CA, a server certificate and device keys for a test deployment",
        description="Creates OUT/ca.crt (give it to every device), OUT/ca.key (keep it on the server machine), "
        "OUT/server.crt + server.key (for `fedhar server --certs OUT`) and OUT/clients/NAME.key + NAME.pub "
        "per device (the .key goes onto that device only; the server registers the .pub). Existing files "
        "are kept, so running it again with new --clients adds devices; a ca.crt without its ca.key is refused.",
    )
    p.add_argument("--out", default="certs", help="output folder (default: certs)")
    p.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                   help="a host name or IP address devices use to reach the server (repeatable); "
                   "127.0.0.1 and localhost are always included")  # fmt: skip
    p.add_argument("--clients", nargs="*", default=[], metavar="NAME", help="device names to create key pairs for")
    p.add_argument("--force", action="store_true", help="replace existing files (devices need the new ones)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedhar.deploy.certs import DEFAULT_HOSTS, create_test_deployment

    hosts = list(dict.fromkeys([*args.host, *DEFAULT_HOSTS]))
    out = Path(args.out)
    files = create_test_deployment(out, hosts, args.clients, overwrite=args.force)
    console.print(f"CA: {files['ca'][0]} (give to devices), {files['ca'][1]} (keep private)")
    console.print(f"server: {files['server'][0]}, {files['server'][1]} — valid for {', '.join(hosts)}")
    for key in files["clients"][0::2]:
        console.print(f"device {key.stem}: {key} (copy to that device only), {key.with_suffix('.pub')} (server)")
    console.print(f"next: fedhar server --config CONFIG --certs {out} --client-keys {out}/clients")
    return 0
