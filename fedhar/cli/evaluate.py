"""``fedhar evaluate``: score a checkpoint on a dataset folder or .npz window set."""

from __future__ import annotations

import argparse

from fedhar.cli.common import console, dump_json, print_metrics


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on labelled data")
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoint)")
    p.add_argument("--data", required=True, help="dataset folder (any supported layout) or .npz window set")
    p.add_argument("--dataset", default="auto", help="loader name (default: detect)")
    p.add_argument("--subjects", nargs="*", help="only these subjects")
    p.add_argument("--label-map", nargs="*", default=[], metavar="FROM=TO", help="rename data labels to the model's")
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedhar.inference import windows_for_model
    from fedhar.model.state import load_checkpoint
    from fedhar.training.loop import evaluate

    model = load_checkpoint(args.checkpoint)
    label_map = dict(item.split("=", 1) for item in args.label_map)
    ws = windows_for_model(model.data, args.data, args.dataset, label_map or None)
    if args.subjects:
        ws = ws.where(subject=[str(s) for s in args.subjects])
    metrics = evaluate(model, ws)
    print_metrics(f"{Path(args.checkpoint).name} on {args.data}", metrics)
    if args.json_out:
        Path(args.json_out).write_text(dump_json(metrics))
        console.print(f"metrics written to {args.json_out}")
    return 0
