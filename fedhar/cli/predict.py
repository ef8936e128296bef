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
    p.add_argument("--sample-rate", type=float, help="rate in Hz when the file has no timestamp column")
    p.add_argument("--calibrate", action="store_true",
                   help="treat the recordings as one client and apply the per-client calibration the checkpoint "
                        "stores (train.client_calibration): re-split its confused pair on its own windows")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import csv
    import sys
    import time

    from fedhar.calibration import NO_STORED_CALIBRATION, stored_calibration
    from fedhar.errors import ConfigError
    from fedhar.inference import predict_recordings
    from fedhar.model.state import load_checkpoint

    if args.out:
        check_writable(args.out, "--out")
    calibration = None
    if args.calibrate:
        calibration = stored_calibration(args.checkpoint)
        if calibration is None:
            raise ConfigError(f"{args.checkpoint} stores no client calibration: {NO_STORED_CALIBRATION}")
    model = load_checkpoint(args.checkpoint)
    t0 = time.perf_counter()
    rows, report = predict_recordings(model, args.recordings, args.overlap, args.units, args.sample_rate, calibration)
    columns = ["start_s", "end_s", "activity", "confidence"]
    if len(args.recordings) > 1:
        columns.insert(0, "recording")
    if calibration is not None:
        columns.append("model_activity")
    labelled = [r for r in rows if r.get("label") and r["activity"]]
    if any("label" in r for r in rows):
        columns.append("label")
    seconds = time.perf_counter() - t0
    target = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        w = csv.DictWriter(target, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    finally:
        if args.out:
            target.close()
    console.print(f"{len(rows)} windows in {seconds:.2f} s ({1000 * seconds / max(1, len(rows)):.1f} ms/window)"
                  + (f" → {args.out}" if args.out else ""))  # fmt: skip
    if labelled:
        agree = sum(r["activity"] == r["label"] for r in labelled)
        console.print(f"{len(labelled)} windows lie inside one labelled stretch: the activity written matches the "
                      f"label on {agree} ({agree / len(labelled):.1%}); per-class scores: fedhar evaluate "
                      f"{args.checkpoint} --data RECORDING.csv", soft_wrap=True)  # fmt: skip
    if report is not None:
        console.print(calibration_summary(report, calibration.min_gap), soft_wrap=True)
    return 0


def calibration_summary(report: dict, min_gap: float) -> str:
    """One line on what the calibration did to the recordings, and why it left them alone if it did."""
    pair = "/".join(report["pair"])
    if report["pair_windows"] < 2:
        return f"calibration {pair}: not applied, the model gives the pair {report['pair_windows']} windows"
    gap = report["gap_ratio"]
    if report["applied"]:
        return (f"calibration {pair}: re-split {report['pair_windows']} windows, {report['changed']} changed "
                f"(the split's halves lie {gap:.2f} of the training distance apart)")  # fmt: skip
    return (f"calibration {pair}: not applied, the split's halves lie only {gap:.2f} of the training distance "
            f"apart (at least {min_gap:.2f} needed, what one posture cut in two looks like): kept as the model "
            "labelled them")  # fmt: skip
