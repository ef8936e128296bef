"""``fedhar train``: centralized training with a subject-disjoint train/val/test split."""

from __future__ import annotations

import argparse

from fedhar.cli.common import add_config_args, console, print_metrics


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="centralized training; results in runs/<name>/")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedhar.config import load_config
    from fedhar.results.run import RunDir
    from fedhar.training.centralized import preflight, train_centralized

    cfg = load_config(args.config, args.overrides)
    preflight(cfg)
    run_dir = RunDir.create(cfg, kind="train")
    console.print(f"[bold]fedhar train[/] {cfg.name} → {run_dir.path}")
    try:
        summary = train_centralized(cfg, run_dir, progress=not args.quiet)
    except BaseException:
        run_dir.discard_if_unused()
        raise
    p = summary["parameters"]
    console.print(f"trainable {p['trainable']:,} / total {p['total']:,} parameters ({summary['trainable_percent']}%)")
    if summary.get("warning"):
        console.print(f"[bold red]{summary['warning']}[/]")
    if summary.get("data_note"):
        console.print(f"[bold yellow]{summary['data_note']}[/]")
    if summary["test"]:
        print_metrics(f"{cfg.name}: test subjects", summary["test"])
    for role, scored in summary.get("client_calibrated", {}).items():
        per_subject = scored["per_subject"].values()
        resplit = sum(r["applied"] for r in per_subject)
        console.print(f"per-client calibrated {'/'.join(cfg.train.client_calibration)}, {role} subjects: macro-F1 "
                      f"{scored['macro_f1']:.4f} (per window {summary[role]['macro_f1']:.4f}), re-split {resplit} "
                      f"of {len(per_subject)} subjects", soft_wrap=True)  # fmt: skip
    console.print(f"results in {run_dir.path}")
    return 0
