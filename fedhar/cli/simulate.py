"""``fedhar simulate``: federated training (frontend + LoRA + head) on Flower's Ray simulation engine."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedhar.cli.common import add_config_args, console

#: the embedded default experiment: synthetic devices/placements, a handful of clients and rounds
DEFAULT_CONFIG = "default.yaml"  # shipped with fedhar (fedhar.config.shipped_config)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="federated training on Flower's simulation engine (Ray); results in runs/<name>/",
        description="Runs the fedhar Flower apps (clients/app.py, server/app.py) on Flower's Ray-backed "
        "simulation engine. Without --config it runs the embedded default (configs/default.yaml).",
    )
    add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last completed round "
                   "(its saved config.yaml, plus any KEY=VALUE overrides, e.g. federated.rounds=40)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no per-round progress")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedhar.config import load_config
    from fedhar.errors import ConfigError
    from fedhar.config import shipped_config
    from fedhar.federated.simulate import preflight, simulate
    from fedhar.results.run import RunDir

    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own saved config.yaml; drop --config "
                              "(KEY=VALUE overrides still apply)")  # fmt: skip
        run_dir = RunDir(Path(args.resume))
        if not run_dir.file("config.yaml").is_file():
            raise ConfigError(f"cannot resume: {args.resume} holds no config.yaml of an earlier fedhar run")
        cfg, _ = preflight(load_config(run_dir.file("config.yaml"), args.overrides))
        run_dir.record_resume(cfg, args.overrides)
    else:
        cfg, _ = preflight(load_config(args.config or shipped_config(DEFAULT_CONFIG), args.overrides))
        run_dir = RunDir.create(cfg, kind="simulate")
    console.print(f"[bold]fedhar simulate[/] {cfg.name} → {run_dir.path}")
    summary = simulate(cfg, run_dir, resume=bool(args.resume), verbose=args.verbose, progress=not args.quiet)
    final = summary.get("final", {})
    scores = [f"{split} F1 {final[f'{split}_macro_f1']:.4f} acc {final[f'{split}_accuracy']:.4f}"
              for split in ("val", "test") if f"{split}_macro_f1" in final]  # fmt: skip
    console.print("final global model: " + "  ".join(scores))
    comm = summary.get("communication")
    if comm:
        console.print(f"bytes per client per round {comm['bytes_per_client_per_round'] / 1e6:.3f} MB "
                      f"({100 * comm['ratio_vs_full_model_fedavg']:.2f}% of full-model FedAvg)")  # fmt: skip
    for key in ("warning", "data_note"):
        if summary.get(key):
            console.print(f"[bold yellow]{summary[key]}[/]")
    console.print(f"results in {run_dir.path} ({summary['simulation_wall_seconds']:.1f} s)")
    return 0
