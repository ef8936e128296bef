"""``fedhar evaluate``: score a checkpoint on a dataset folder or .npz window set."""

from __future__ import annotations

import argparse

from fedhar.cli.common import console, dump_json, print_metrics
from fedhar.data.windows import META_FIELDS


def print_breakdown(tag: str, groups: dict[str, dict], label_names: list[str]) -> None:
    """One row per subject (device, ...): windows, accuracy, macro-F1 and its most frequent confusion."""
    from rich.table import Table

    table = Table(title=f"by {tag}")
    for col in (tag, "windows", "accuracy", "macro-F1", "most frequent error"):
        table.add_column(col, justify="left" if col in (tag, "most frequent error") else "right")
    for value, m in groups.items():
        cm = [row[:] for row in m["confusion_matrix"]]
        for i in range(len(cm)):
            cm[i][i] = 0
        count, true, pred = max((c, i, j) for i, row in enumerate(cm) for j, c in enumerate(row))
        error = f"{label_names[true]} → {label_names[pred]} ({count})" if count else "-"
        table.add_row(value, str(m["num_windows"]), f"{m['accuracy']:.4f}", f"{m['macro_f1']:.4f}", error)
    console.print(table)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint (or an ensemble of several) on labelled data")
    p.add_argument("checkpoint", nargs="+",
                   help="checkpoint folder (runs/<name>/checkpoint); several are scored as one ensemble "
                        "(mean class probabilities), e.g. the runs of several seeds")  # fmt: skip
    p.add_argument("--data", required=True, help="dataset folder (any supported layout) or .npz window set")
    p.add_argument("--dataset", default="auto", help="loader name (default: detect)")
    p.add_argument("--subjects", nargs="*", help="only these subjects")
    p.add_argument("--label-map", nargs="*", default=[], metavar="FROM=TO", help="rename data labels to the model's")
    p.add_argument("--by", choices=META_FIELDS,
                   help="also score each subject (device, ...) on its own")  # fmt: skip
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedhar.inference import windows_for_model
    from fedhar.model.ensemble import load_model
    from fedhar.training.loop import evaluate

    model = load_model(args.checkpoint)
    label_map = dict(item.split("=", 1) for item in args.label_map)
    ws = windows_for_model(model.data, args.data, args.dataset, label_map or None)
    if args.subjects:
        ws = ws.where(subject=[str(s) for s in args.subjects])
    metrics = evaluate(model, ws, by=args.by)
    what = Path(args.checkpoint[0]).name if len(args.checkpoint) == 1 else f"ensemble of {len(args.checkpoint)}"
    print_metrics(f"{what} on {args.data}", metrics)
    if args.by:
        print_breakdown(args.by, metrics[f"by_{args.by}"], model.data.label_names)
    if args.json_out:
        Path(args.json_out).write_text(dump_json({"checkpoints": args.checkpoint, **metrics}))
        console.print(f"metrics written to {args.json_out}")
    return 0
