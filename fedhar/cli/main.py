"""fedhar: federated and continual human activity recognition on frozen pretrained language models.

Train centrally (train), score and use checkpoints (evaluate, predict), inspect datasets (data), run
federations in simulation (simulate) or on devices (server, client, certs). Runs land in
runs/<name>/ (override with output_dir=...); README.md and docs/ say more.
"""

# Each subcommand lives in its own module of fedhar.cli with ``add_parser`` and ``run``.

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fedhar import __version__
from fedhar.environment import set_process_environment
from fedhar.errors import FedharError

#: subcommand → module in fedhar.cli (imported only when used: torch/flwr imports are slow)
COMMANDS = {
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "data": "data",
    "backbones": "backbones",
    "simulate": "simulate",
    "server": "server",
    "client": "client",
    "certs": "certs",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedhar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fedhar {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"fedhar.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"fedhar.cli.{module}":
                continue  # command not built into this version
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_process_environment()  # Flower telemetry off unless opted in, passive OpenMP threads: before torch loads
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (`fedhar train --config c.yaml train.epochs=3 --quiet`)
    unknown = [e for e in extra if "=" not in e or e.startswith("-") or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except FedharError as e:
        if args.verbose:
            raise
        print(f"fedhar {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # last resort for a file the readers could not open (PermissionError, IsADirectoryError...)
        if args.verbose or e.filename is None:  # not about a named file: a bug or a system problem, shown in full
            raise
        print(f"fedhar {args.command}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedhar {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
