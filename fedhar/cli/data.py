"""``fedhar data info PATH``: what a dataset folder holds."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    info = dsub.add_parser("info", help="dataset, subjects, devices, placements, classes, hours")
    info.add_argument("path", help="dataset folder (official layout) or .npz window set")
    info.add_argument("--dataset", default="auto", help="loader name (default: detect)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument(
        "--sample-rate", type=float, metavar="HZ",
        help="rate of generic CSVs without a time column; grid rate of hhar/realworld/wisdm",
    )  # fmt: skip
    info.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedhar.data.info import info_command

    return info_command(args.path, args.dataset, args.json, args.sample_rate)
