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
    from fedhar import posthoc
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
    if "posthoc" in summary:  # the post-hoc adapter's scores, beside the per-window ones
        adapter = posthoc.from_record(summary["posthoc"])
        for role, scored in summary[f"client_{adapter.tag}"].items():
            console.print(f"{adapter.describe()}, {role} subjects: macro-F1 {scored['macro_f1']:.4f} (per window "
                          f"{summary[role]['macro_f1']:.4f}), {adapter.clients_summary(scored['per_subject'])}",
                          soft_wrap=True)  # fmt: skip
    console.print(f"results in {run_dir.path}")
    return 0
