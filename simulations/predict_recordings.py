"""`fedhar predict` on whole held-out HAPT recordings, as trained and with the per-client calibration.

The figures elsewhere score windows cut from labelled segments. A device instead hands
`fedhar predict` a whole recording: postural transitions, unlabelled stretches and all. This
recipe writes every experiment of the held-out subjects as a CSV of raw samples (acc in g, gyro
in rad/s, a time column: what a phone would export), predicts it window by window through
``predict_recordings`` (the code behind `fedhar predict`) as trained, with ``--calibrate`` on each
recording alone (the recording is one client: every window the model calls either class of the
pair, transitions included, takes part in the re-split) and with ``--calibrate`` on all of a
wearer's recordings at once (one client holding its history), and scores the windows that lie
wholly inside one labelled segment of a class the model knows.

The calibration is the one the checkpoint stores (``train.client_calibration``); a run without
one gets it fitted on its own training subjects, as ``fedhar evaluate --calibrate-from`` does.

    python simulations/predict_recordings.py --out runs/predict-recordings runs/client-calibration/hapt-calibrated-s0

Writes predict_recordings.csv (one row per run), .json (per recording, versions, git revision) and .png.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from boundary_shift import write_results  # noqa: E402
from run_inputs import add_run_arguments, check_runs, run_config  # noqa: E402

from fedhar.calibration import PairCalibration, stored_calibration  # noqa: E402
from fedhar.data.loaders import load_recordings  # noqa: E402
from fedhar.data.recording import Recording  # noqa: E402
from fedhar.metrics import classification_metrics  # noqa: E402


def write_csv(rec: Recording, path: Path) -> None:
    """The recording as a device would export it: time in seconds and the named channels, no labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(len(rec.signal)) / rec.sample_rate
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["time", *rec.layout.channels])
        w.writerows([f"{ti:.3f}", *(f"{v:.6f}" for v in row)] for ti, row in zip(t, rec.signal))


def window_truth(rec: Recording, names: list[str], model_classes: list[str], starts: np.ndarray,
                 length: int) -> np.ndarray:  # fmt: skip
    """Per window (``starts`` in samples of ``rec``), the index of its class in ``model_classes``; -1 where the
    window is not wholly inside one labelled segment of such a class (transitions, unlabelled stretches:
    predicted, not scored)."""
    truth = np.full(len(starts), -1)
    for i, a in enumerate(starts):
        labels = rec.labels[a : a + length]
        if len(labels) and (labels == labels[0]).all() and labels[0] >= 0 and names[labels[0]] in model_classes:
            truth[i] = model_classes.index(names[labels[0]])
    return truth


def calibration_for(run: Path, model, pair: tuple[str, str], overrides: list[str]) -> tuple[PairCalibration, str]:
    """The run's stored calibration, or one fitted on the run's training subjects."""
    from fedhar.inference import windows_for_model

    stored = stored_calibration(run / "checkpoint")
    if stored is not None:
        if (stored.first, stored.second) != pair:
            raise SystemExit(f"{run}: the checkpoint stores a {stored.first}/{stored.second} calibration, not {pair}")
        return stored, "stored in the checkpoint"
    cfg = run_config(run, overrides, roles=("train",))
    ws = windows_for_model(model.data, cfg.data.path, cfg.data.dataset, None)
    train = ws.where(subject=[str(s) for s in cfg.data.split.train])
    return PairCalibration.fit(train, pair), "fitted on the run's training subjects"


def score_run(run: Path, recordings: list[tuple[str, Recording]], names: list[str], csv_dir: Path,
              pair: tuple[str, str], overrides: list[str]) -> tuple[dict, dict]:  # fmt: skip
    """Scored windows as trained, with each recording one client, and with each wearer's recordings one client."""
    from fedhar.inference import predict_recordings
    from fedhar.model.state import load_checkpoint

    model = load_checkpoint(run / "checkpoint")
    classes = list(model.data.label_names)
    calibration, source = calibration_for(run, model, pair, overrides)

    def labels(rows: list[dict]) -> np.ndarray:
        return np.array([classes.index(r["activity"]) if r["activity"] else -1 for r in rows])

    truth, preds, per_recording = [], {"as_trained": [], "per_recording": [], "per_wearer": []}, {}
    for subject in sorted({rec.subject for _, rec in recordings}, key=int):
        mine = [(key, rec) for key, rec in recordings if rec.subject == subject]
        paths = [csv_dir / f"{key}.csv" for key, _ in mine]
        plain, _ = predict_recordings(model, paths)
        wearer, _ = predict_recordings(model, paths, calibration=calibration)
        start = 0
        for (key, rec), path in zip(mine, paths):
            n = sum(r["recording"] == str(path) for r in plain)
            starts = [int(round(r["start_s"] * rec.sample_rate)) for r in plain[start : start + n]]
            t = window_truth(rec, names, classes, np.array(starts), model.data.window_len)
            variants = {"as_trained": labels(plain[start : start + n]),
                        "per_recording": labels(predict_recordings(model, [path], calibration=calibration)[0]),
                        "per_wearer": labels(wearer[start : start + n])}  # fmt: skip
            scored = t >= 0
            truth.append(t[scored])
            for variant, p in variants.items():
                preds[variant].append(p[scored])
            per_recording[key] = {"windows": n, "scored": int(scored.sum()),
                                  **{f"accuracy_{v}": round(float((p[scored] == t[scored]).mean()), 4)
                                     for v, p in variants.items()}}  # fmt: skip
            start += n
    y = np.concatenate(truth)
    metrics = {v: classification_metrics(y, np.concatenate(p), classes) for v, p in preds.items()}
    row = {"run": run.name, "calibration": source, "recordings": len(recordings),
           "windows_predicted": sum(r["windows"] for r in per_recording.values()), "windows_scored": len(y),
           **{f"macro_f1_{v}": round(m["macro_f1"], 4) for v, m in metrics.items()},
           **{f"accuracy_{v}": round(m["accuracy"], 4) for v, m in metrics.items()}}  # fmt: skip
    return row, {"recordings": per_recording, **metrics}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "run folders of `fedhar train` (checkpoint/ and config.yaml)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/hapt-train"), help="the HAPT folder")
    p.add_argument("--subjects", nargs="+", default=["27", "28", "29", "30"], help="whose recordings to predict")
    p.add_argument("--pair", nargs=2, default=["SITTING", "STANDING"], metavar=("FIRST", "SECOND"))
    p.add_argument("--out", type=Path, default=Path("runs/predict-recordings"))
    args = p.parse_args()
    check_runs(args.runs)
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is not a folder; pass the unpacked HAPT folder with --data")

    rs = load_recordings(args.data, "hapt")
    recordings = [(f"{r.session}_user{r.subject}", r) for r in rs.recordings if r.subject in args.subjects]
    if not recordings:
        raise SystemExit(f"no recordings of subjects {args.subjects} in {args.data}")
    csv_dir = args.out / "recordings"
    for key, rec in recordings:
        write_csv(rec, csv_dir / f"{key}.csv")

    rows, details = [], {}
    for run in args.runs:
        row, details[run.name] = score_run(run, recordings, rs.label_names, csv_dir, tuple(args.pair), args.overrides)
        rows.append(row)
        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 4))
    x = np.arange(len(rows))
    for i, (variant, label) in enumerate((("as_trained", "fedhar predict REC"),
                                          ("per_recording", "fedhar predict REC --calibrate"),
                                          ("per_wearer", "fedhar predict REC1 REC2 --calibrate"))):  # fmt: skip
        ax.bar(x + (i - 1) * 0.27, [r[f"macro_f1_{variant}"] for r in rows], 0.27, label=label)
    lowest = min(r[f"macro_f1_{v}"] for r in rows for v in ("as_trained", "per_recording", "per_wearer"))
    ax.set(title=f"whole recordings of subjects {' '.join(args.subjects)}", ylabel="macro-F1 (labelled windows)",
           xticks=x, ylim=(min(0.8, lowest - 0.02), 1.0))  # fmt: skip
    ax.set_xticklabels([r["run"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    write_results(args.out, "predict_recordings", rows, fig,
                  {"subjects": args.subjects, "pair": args.pair, "overrides": args.overrides, "runs": details})  # fmt: skip


if __name__ == "__main__":
    main()
