"""``fedhar server``: a Flower SuperLink for real devices, running the fedhar round loop (results in runs/<name>/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedhar.cli.common import add_config_args, console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "server",
        help="federated training with real devices (Flower SuperLink); results in runs/<name>/",
        description="Starts a Flower SuperLink (TLS and SuperNode authentication unless --insecure) and runs the "
        "fedhar round loop on the devices that join with `fedhar client`. The round loop, strategies and "
        "results are those of `fedhar simulate`; the server scores the global model on the config's "
        "validation/test subjects, so it needs that data locally.",
    )
    add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last completed round "
                   "(a restarted server; its saved config.yaml plus any KEY=VALUE overrides)")  # fmt: skip
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="where the SuperLink listens for devices (default 127.0.0.1:9092; 0.0.0.0:9092 for a "
                   "LAN)")  # fmt: skip
    p.add_argument("--certs", type=Path, metavar="DIR",
                   help="folder with ca.crt, server.crt, server.key (`fedhar certs`)")  # fmt: skip
    p.add_argument("--client-keys", type=Path, nargs="+", default=[], metavar="PATH",
                   help="device public keys to register (.pub files or folders of them); only these devices can "
                   "join")  # fmt: skip
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no device authentication (a trusted test network only)")  # fmt: skip
    p.add_argument("--clients", type=int, metavar="N",
                   help="wait for N connected clients before the setup round (default: "
                   "federated.min_clients)")  # fmt: skip
    p.add_argument("--superlink", metavar="HOST:PORT", help="use this running SuperLink (started with "
                   "--isolation process) instead of starting one; fedhar claims only its own run's ServerApp "
                   "task")  # fmt: skip
    p.add_argument("--superexec-secret", type=Path, metavar="FILE",
                   help="with --superlink: the file it got as --superexec-auth-secret-file")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no per-round progress")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedhar.config import load_config
    from fedhar.deploy.runtime import quiet_flower
    from fedhar.deploy.server import DEFAULT_ADDRESS, ServerOptions, preflight, serve
    from fedhar.errors import ConfigError
    from fedhar.results.run import RunDir

    quiet_flower(args.verbose)
    # `--client-keys certs/clients federated.rounds=3`: argparse gives the override to the key list
    moved = [p for p in args.client_keys if "=" in str(p) and not p.exists()]
    args.overrides += [str(p) for p in moved]
    args.client_keys = [p for p in args.client_keys if p not in moved]
    opts = ServerOptions(address=args.address or DEFAULT_ADDRESS, certs=args.certs, client_keys=args.client_keys,
                         insecure=args.insecure, superlink=args.superlink, superexec_secret=args.superexec_secret,
                         wait_for_clients=args.clients)  # fmt: skip
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own saved config.yaml; drop --config")
        run_dir = RunDir(Path(args.resume))
        if not run_dir.file("config.yaml").is_file():
            raise ConfigError(f"cannot resume: {args.resume} holds no config.yaml of an earlier fedhar run")
        cfg, _, _ = preflight(load_config(run_dir.file("config.yaml"), args.overrides), opts)
        run_dir.record_resume(cfg, args.overrides)
    else:
        if not args.config:
            raise ConfigError("fedhar server needs --config (e.g. configs/deploy-hapt.yaml), or --resume RUN_DIR")
        cfg, _, _ = preflight(load_config(args.config, args.overrides), opts)  # before a run folder is made
        run_dir = RunDir.create(cfg, kind="server")
    console.print(f"[bold]fedhar server[/] {cfg.name} → {run_dir.path}")
    try:
        summary = serve(cfg, run_dir, opts, resume=bool(args.resume), progress=not args.quiet)
    except BaseException:
        if not args.resume:
            run_dir.discard_if_unused()
        raise
    final = summary.get("final", {})
    scores = [f"{split} F1 {final[f'{split}_macro_f1']:.4f} acc {final[f'{split}_accuracy']:.4f}"
              for split in ("val", "test") if f"{split}_macro_f1" in final]  # fmt: skip
    console.print("final global model: " + "  ".join(scores))
    console.print(f"results in {run_dir.path} ({summary['wall_seconds']:.1f} s)")
    return 0
