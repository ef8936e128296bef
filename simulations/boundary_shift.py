"""How much of a confused pair's error is where the boundary sits, and how much is the ranking itself.

Almost every error of the HAPT default is SITTING <-> STANDING. If the model ranks the windows well but
puts the boundary in the wrong place for the test subjects, adding a bias ``b`` to one class's
logit fixes it; if not, no threshold does. For each trained run this recipe sweeps ``b`` and
reports the held-out macro-F1 at ``b = 0`` (the model as trained), at the ``b`` that is best on
the validation subjects (a legitimate recalibration), and at the ``b`` that is best on the test
subjects themselves (an oracle: the ceiling of any recalibration, never a result). Each run is
scored on the validation and test subjects of its own resolved config (so subject cross-validation
runs of seed_study.py --folds are scored on their fold).

Per subject (what a client could do on its own device): the ceiling when every test subject gets
its own best bias (an oracle again, with its labels), and an unsupervised per-subject threshold
that needs no labels: Otsu's split of the subject's logit gap between the two classes, over the
windows predicted as either (it assumes each subject holds windows of both postures).

    python simulations/boundary_shift.py --out runs/boundary-shift runs/seed-study/base-s0 ...

Writes boundary_shift.csv (one row per run), boundary_shift.json (with the sweep curves,
command, versions and git revision) and boundary_shift.png. ``--set data.path=...`` when the
runs' data moved.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from run_inputs import add_run_arguments, check_runs, provenance, run_config  # noqa: E402

from fedhar.calibration import otsu_threshold  # noqa: E402
from fedhar.metrics import classification_metrics  # noqa: E402
from fedhar.results.run import write_json_atomic  # noqa: E402

SHIFTS = np.round(np.linspace(-8, 8, 161), 2)


def shift_curve(logits: np.ndarray, y: np.ndarray, label_names: list[str], favoured: str,
                shifts: np.ndarray = SHIFTS) -> np.ndarray:
    """Macro-F1 of ``argmax(logits + b * onehot(favoured))`` for every ``b`` in ``shifts``."""
    k = label_names.index(favoured)
    curve = []
    for b in shifts:
        shifted = logits.copy()
        shifted[:, k] += b
        curve.append(classification_metrics(y, shifted.argmax(axis=1), label_names)["macro_f1"])
    return np.asarray(curve)


def best_shift(curve: np.ndarray, shifts: np.ndarray = SHIFTS) -> int:
    """Index of the best shift; among equally good ones the smallest |b| (the least change to the model)."""
    best = np.flatnonzero(curve == curve.max())
    return int(best[np.argmin(np.abs(shifts[best]))])


def summarize(val_curve: np.ndarray, test_curve: np.ndarray, shifts: np.ndarray = SHIFTS) -> dict:
    """Test macro-F1 as trained, after the validation-chosen shift, and at the test-oracle shift."""
    zero, by_val, oracle = int(np.argmin(np.abs(shifts))), best_shift(val_curve, shifts), best_shift(test_curve, shifts)
    return {"test_as_trained": round(float(test_curve[zero]), 4), "val_as_trained": round(float(val_curve[zero]), 4),
            "val_chosen_shift": float(shifts[by_val]), "test_at_val_chosen_shift": round(float(test_curve[by_val]), 4),
            "oracle_shift": float(shifts[oracle]), "test_oracle_ceiling": round(float(test_curve[oracle]), 4)}  # fmt: skip


def _macro_f1(logits: np.ndarray, y: np.ndarray, label_names: list[str]) -> float:
    return classification_metrics(y, logits.argmax(axis=1), label_names)["macro_f1"]


def per_subject_oracle(logits: np.ndarray, y: np.ndarray, subject: np.ndarray, label_names: list[str],
                       favoured: str, shifts: np.ndarray = SHIFTS) -> float:
    """Macro-F1 when each subject gets the shift that is best on its own labels (ties: the smallest)."""
    k = label_names.index(favoured)
    adjusted = logits.copy()
    for s in np.unique(subject):
        m = subject == s
        accuracy = np.array([np.mean(np.argmax(logits[m] + b * np.eye(len(label_names))[k], axis=1) == y[m])
                             for b in shifts])  # fmt: skip
        adjusted[m, k] += shifts[best_shift(accuracy, shifts)]
    return _macro_f1(adjusted, y, label_names)


def per_subject_unsupervised(logits: np.ndarray, subject: np.ndarray, label_names: list[str], favoured: str,
                             rival: str) -> np.ndarray:
    """Predictions with each subject's pair boundary moved to Otsu's split of its own (favoured - rival) logit
    gap; only the windows predicted as either class of the pair are re-decided, the others keep theirs."""
    f, r = label_names.index(favoured), label_names.index(rival)
    predictions = logits.argmax(axis=1)
    for s in np.unique(subject):
        rows = np.flatnonzero(subject == s)
        pair = rows[np.isin(predictions[rows], [f, r])]
        if len(pair) < 2:
            continue  # nothing to split: the subject's boundary stays where training put it
        gap = logits[pair, f] - logits[pair, r]
        predictions[pair] = np.where(gap > otsu_threshold(gap), f, r)
    return predictions


def group_means(rows: list[dict]) -> dict[str, dict]:
    """Mean of every figure per candidate: runs named ``<candidate>-s<seed>[-f<fold>]`` (seed_study.py) group together."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(re.sub(r"-s\d+(-f\d+)?$", "", r["run"]), []).append(r)
    means = {}
    for g, rs in groups.items():
        keys = dict.fromkeys(k for r in rs for k, v in r.items() if isinstance(v, (int, float)))
        means[g] = {"runs": len(rs), **{k: round(float(np.mean([r[k] for r in rs if k in r])), 4) for k in keys}}
    return means


def write_results(out: Path, stem: str, rows: list[dict], fig, record: dict) -> None:
    """``<stem>.csv`` (one row per run), ``.json`` (record, rows, means per candidate, versions, git) and ``.png``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{stem}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    means = group_means(rows)
    write_json_atomic(out / f"{stem}.json", {**record, "per_run": rows, "mean_per_candidate": means, **provenance()})
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    for group, m in means.items():
        print(f"mean of {group}: " + "  ".join(f"{k} {v}" for k, v in m.items()))
    print(f"written to {out}/{stem}.csv, .json and .png")


def _held_out_logits(run: Path, data_path: str, dataset: str, val: list, test: list) -> dict:
    """Logits, labels and class names of the run's checkpoint on the validation and the test subjects."""
    from fedhar.inference import windows_for_model
    from fedhar.model.har_model import predict_logits
    from fedhar.model.state import load_checkpoint

    model = load_checkpoint(run / "checkpoint")
    ws = windows_for_model(model.data, data_path, dataset, None)
    out = {"names": list(ws.label_names)}
    for role, subjects in (("val", val), ("test", test)):
        part = ws.where(subject=[str(s) for s in subjects])
        out[role] = (predict_logits(model, part.x), part.y, part.subject)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "run folders of `fedhar train`: each is scored on its own config's val and test subjects")
    p.add_argument("--out", type=Path, default=Path("runs/boundary-shift"))
    p.add_argument("--favour", default="STANDING", help="the class whose logit is shifted (one side of the pair)")
    p.add_argument("--against", default="SITTING", help="the other side of the confused pair")
    args = p.parse_args()
    check_runs(args.runs)

    rows, curves = [], {}
    for run in args.runs:
        cfg = run_config(run, args.overrides)
        split = cfg.data.split
        held_out = _held_out_logits(run, cfg.data.path, cfg.data.dataset, split.val, split.test)
        names = held_out["names"]
        for cls in (args.favour, args.against):
            if cls not in names:
                raise SystemExit(f"{cls} (--favour/--against) is not a class of {run}: {names}")
        (val_logits, val_y, _), (test_logits, test_y, test_subject) = held_out["val"], held_out["test"]
        val_curve = shift_curve(val_logits, val_y, names, args.favour)
        test_curve = shift_curve(test_logits, test_y, names, args.favour)
        unsupervised = {}
        for role in ("val", "test"):
            logits, y, subject = held_out[role]
            predictions = per_subject_unsupervised(logits, subject, names, args.favour, args.against)
            unsupervised[role] = round(classification_metrics(y, predictions, names)["macro_f1"], 4)
        rows.append({"run": run.name, "val_subjects": " ".join(map(str, split.val)),
                     "test_subjects": " ".join(map(str, split.test)), **summarize(val_curve, test_curve),
                     "test_per_subject_oracle": round(per_subject_oracle(test_logits, test_y, test_subject, names,
                                                                         args.favour), 4),
                     "val_per_subject_unsupervised": unsupervised["val"],
                     "test_per_subject_unsupervised": unsupervised["test"]})  # fmt: skip
        curves[run.name] = {"val": val_curve.round(4).tolist(), "test": test_curve.round(4).tolist()}
        print("  ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i % 10}"
        ax.plot(SHIFTS, c["test"], color=color, label=f"{name} test")
        ax.plot(SHIFTS, c["val"], color=color, ls=":", label=f"{name} val")
    ax.axvline(0, color="k", lw=0.5)
    lowest = min(min(c["val"] + c["test"]) for c in curves.values())
    ax.set(xlabel=f"bias added to the {args.favour} logit", ylabel="macro-F1", ylim=(min(0.85, lowest - 0.01), 1.0),
           title="held-out macro-F1 against a class-bias shift")  # fmt: skip
    if len(curves) <= 12:  # beyond that a legend hides the curves
        ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    write_results(args.out, "boundary_shift", rows, fig,
                  {"favoured_class": args.favour, "shifts": SHIFTS.tolist(), "overrides": args.overrides, "curves": curves})  # fmt: skip

if __name__ == "__main__":
    main()
