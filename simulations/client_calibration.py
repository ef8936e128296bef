"""Per-client posture calibration: each subject splits its own sitting/standing windows, without labels.

The default's last errors are whole subjects whose sitting looks like other people's standing
(posture_cues.py): shifted, not scrambled (boundary_shift.py: a per-subject bias would lift the
test macro-F1 from 0.946 to 0.966). A client holds many unlabelled windows of its one wearer, so
it can place that boundary itself. This recipe tests the simplest such rule:

1. on the training subjects (labelled), fit one direction in posture-cue space (the gravity
   direction and log sway of every channel, ``WindowCues.cues``) that separates the pair --
   Fisher's linear discriminant, closed form, nine numbers;
2. per held-out subject, take the windows the trained model calls either class, project their
   cues on that direction and split them at Otsu's threshold of the subject's own projections
   (no labels: it assumes the subject holds windows of both postures, and leaves the model's
   labels alone when the split's two sides lie closer than ``--min-gap`` times the training
   windows' sitting-standing distance: one posture cut in two);
3. score the model's labels as trained and after the split, on validation and test subjects;
4. stress the assumption: each test subject again with one posture's windows removed (a client
   that only ever sat, or only stood), reporting the pair windows' accuracy before and after.

Each run is scored on the split of its own resolved config (subject-CV runs on their fold). This
is transductive over a subject's windows: a different protocol from per-window classification,
reported beside it.

    python simulations/client_calibration.py --out runs/client-calibration runs/seed-study/base-s0 ...

Writes client_calibration.csv (one row per run), .json (per subject, versions, git revision) and .png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from boundary_shift import write_results  # noqa: E402
from run_inputs import add_run_arguments, check_runs, run_config  # noqa: E402

from fedhar.calibration import PairCalibration, posture_cues, split_per_subject  # noqa: E402
from fedhar.errors import FedharError  # noqa: E402
from fedhar.metrics import classification_metrics  # noqa: E402


def _score_run(run: Path, overrides: list[str], pair: tuple[str, str], min_gap: float) -> tuple[dict, dict]:
    from fedhar.inference import windows_for_model
    from fedhar.model.har_model import predict_logits
    from fedhar.model.state import load_checkpoint

    cfg = run_config(run, overrides, roles=("train", "val", "test"))
    split = cfg.data.split
    model = load_checkpoint(run / "checkpoint")
    ws = windows_for_model(model.data, cfg.data.path, cfg.data.dataset, None)
    names = list(ws.label_names)
    try:
        calibration = PairCalibration.fit(ws.where(subject=[str(s) for s in split.train]), pair, min_gap)
    except (ValueError, FedharError) as e:
        raise SystemExit(f"{run}: training subjects {split.train}: {e}") from e
    first, second = names.index(pair[0]), names.index(pair[1])

    row, detail = {"run": run.name, "val_subjects": " ".join(map(str, split.val)),
                   "test_subjects": " ".join(map(str, split.test))}, {}  # fmt: skip
    for role, subjects in (("val", split.val), ("test", split.test)):
        part = ws.where(subject=[str(s) for s in subjects])
        pred = predict_logits(model, part.x).argmax(axis=1)
        cues = posture_cues(part.layout, part.x)
        calibrated, report = _split(calibration, pred, cues, part.subject, first, second)
        row[f"{role}_as_trained"] = round(classification_metrics(part.y, pred, names)["macro_f1"], 4)
        row[f"{role}_calibrated"] = round(classification_metrics(part.y, calibrated, names)["macro_f1"], 4)
        for s, r in report.items():
            m = part.subject == s
            r["accuracy_as_trained"] = round(float((pred[m] == part.y[m]).mean()), 4)
            r["accuracy_calibrated"] = round(float((calibrated[m] == part.y[m]).mean()), 4)
        detail[role] = report
        if role == "test":
            row.update(_one_posture_stress(part, pred, cues, calibration, first, second))
    return row, {"direction": calibration.direction.round(5).tolist(), "typical_gap": round(calibration.typical_gap, 5),
                 "per_subject": detail}  # fmt: skip


def _split(calibration: PairCalibration, pred, cues, subject, first: int, second: int):
    return split_per_subject(pred, cues, subject, calibration.direction, first, second, calibration.typical_gap,
                             calibration.min_gap)  # fmt: skip


def _one_posture_stress(part, pred, cues, calibration: PairCalibration, first: int, second: int) -> dict:
    """Pair-window accuracy of clients that hold one posture only: each test subject minus the other posture."""
    before, after, applied = [], [], 0
    for s in np.unique(part.subject):
        for keep in (first, second):
            m = (part.subject == s) & (part.y != (second if keep == first else first))
            if not (part.y[m] == keep).any():
                continue  # the subject never held this posture
            calibrated, report = _split(calibration, pred[m], cues[m], part.subject[m], first, second)
            held = part.y[m] == keep
            before.append(float((pred[m][held] == keep).mean()))
            after.append(float((calibrated[held] == keep).mean()))
            applied += int(report[str(s)]["applied"])
    if not before:
        return {}
    return {"one_posture_accuracy_as_trained": round(float(np.mean(before)), 4),
            "one_posture_accuracy_calibrated": round(float(np.mean(after)), 4),
            "one_posture_clients_split": f"{applied}/{len(before)}"}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "run folders of `fedhar train` (checkpoint/ and config.yaml)")
    p.add_argument("--out", type=Path, default=Path("runs/client-calibration"))
    p.add_argument("--pair", nargs=2, default=["SITTING", "STANDING"], metavar=("FIRST", "SECOND"),
                   help="the confused pair each client re-splits")  # fmt: skip
    p.add_argument("--min-gap", type=float, default=0.7,
                   help="leave a subject as trained when its split's two sides lie closer than this share of the "
                        "training windows' sitting-standing distance")  # fmt: skip
    args = p.parse_args()
    if not args.min_gap >= 0:
        raise SystemExit(f"--min-gap must be >= 0, got {args.min_gap}")
    check_runs(args.runs)

    rows, details = [], {}
    for run in args.runs:
        row, details[run.name] = _score_run(run, args.overrides, tuple(args.pair), args.min_gap)
        rows.append(row)
        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    x = np.arange(len(rows))
    for ax, role in zip(axes, ("val", "test")):
        ax.bar(x - 0.2, [r[f"{role}_as_trained"] for r in rows], 0.4, label="as trained")
        ax.bar(x + 0.2, [r[f"{role}_calibrated"] for r in rows], 0.4, label="per-client calibrated")
        lowest = min(min(r[f"{role}_as_trained"], r[f"{role}_calibrated"]) for r in rows)
        ax.set(title=f"{role} subjects", xticks=x, ylim=(min(0.8, lowest - 0.02), 1.0))
        ax.set_xticklabels([r["run"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("macro-F1")
    axes[0].legend(fontsize=8)
    write_results(args.out, "client_calibration", rows, fig,
                  {"pair": args.pair, "min_gap": args.min_gap, "overrides": args.overrides, "runs": details})


if __name__ == "__main__":
    main()
