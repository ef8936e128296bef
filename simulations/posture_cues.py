"""Why HAPT's last errors are SITTING <-> STANDING: what one window can tell about posture, per subject.

A waist phone separates the two postures by the direction of gravity in the device frame (tilt)
and by postural sway (standing sways more). Per subject, both cues separate the postures well;
across subjects the mounting angle and the amount of sway shift by as much as the difference
between the postures, so some subjects' sitting looks like other people's standing. This recipe
prints, per subject, the mean gravity direction and sway of both postures, and how far a linear
classifier on those cues gets when trained on the training subjects (a reference for what a
single 2.56 s window carries, not a model).

    python simulations/posture_cues.py --out runs/posture-cues

Writes posture_cues.csv (one row per subject and posture) and posture_cues.json.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from run_inputs import provenance

from fedhar.config import load_config
from fedhar.data.pipeline import load_windows
from fedhar.data.recording import natural_key
from fedhar.model.frontend import WindowCues
from fedhar.results.run import write_json_atomic

POSTURES = ("SITTING", "STANDING")


def cues(x: np.ndarray, layout) -> dict[str, np.ndarray]:
    """Per window, the cues ``model.head_cues`` feeds the head: unit gravity direction and log sway."""
    both = WindowCues(layout.group_dict).cues(torch.from_numpy(x)).numpy()
    if both.shape[1] != 3 + x.shape[1]:
        raise SystemExit("posture cues need a 3-axis `acc` sensor group in the data")
    return {"tilt": both[:, :3], "sway": both[:, 3:], "tilt+sway": both}


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 3000, lr: float = 0.1, l2: float = 1e-3):
    """Plain L2 logistic regression by gradient descent on standardised features (no extra dependency)."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-z @ w))
        w -= lr * (z.T @ (p - y) / len(y) + l2 * w)
    return lambda q: (np.c_[(q - mu) / sd, np.ones(len(q))] @ w > 0).astype(int)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/posture-cues"))
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. data.path=...)")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    if not cfg.data.split.train or cfg.data.path is None:
        raise SystemExit(f"{args.config}: this recipe needs recordings on disk (data.path) and named training "
                         "subjects (data.split.train), e.g. --config configs/hapt.yaml")  # fmt: skip
    ws = load_windows(cfg.data, cfg.seed)
    missing = [c for c in POSTURES if c not in ws.label_names]
    if missing:
        raise SystemExit(f"{args.config}: classes {missing} are not in the data's {ws.label_names}")
    classes = [ws.label_names.index(c) for c in POSTURES]
    keep = np.isin(ws.y, classes)
    x, y, subject = ws.x[keep], (ws.y[keep] == classes[1]).astype(int), ws.subject[keep]
    features = cues(x, ws.layout)
    groups = ws.layout.group_dict
    train = np.isin(subject, cfg.data.split.train)
    held_out = [s for s in sorted(set(subject.tolist()), key=natural_key) if s not in set(cfg.data.split.train)]

    rows = []
    for s in sorted(set(subject.tolist()), key=natural_key):
        for k, posture in enumerate(POSTURES):
            m = (subject == s) & (y == k)
            tilt, sway = features["tilt"][m].mean(0), x[m].std(axis=2).mean(0)
            rows.append({"subject": s, "role": "train" if s in cfg.data.split.train else "held out",
                         "posture": posture, "windows": int(m.sum()),
                         **{f"gravity_{a}": round(float(v), 3) for a, v in zip("xyz", tilt)},
                         "acc_sway_g": round(float(sway[groups["acc"]].mean()), 4),
                         "gyro_sway_rad_s": round(float(sway[groups["gyro"]].mean()), 4)})  # fmt: skip
    linear = {}
    for name, f in features.items():
        predict = fit_logistic(f[train], y[train])
        pred = predict(f)
        linear[name] = {"train_accuracy": round(float((pred[train] == y[train]).mean()), 3),
                        **{s: round(float((pred[subject == s] == y[subject == s]).mean()), 3) for s in held_out}}  # fmt: skip

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "posture_cues.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    write_json_atomic(args.out / "posture_cues.json", {"per_subject": rows, "linear_sit_vs_stand": linear,
                                                       "config": cfg.to_dict(), **provenance()})  # fmt: skip
    print("subject  posture   gravity direction (x y z)   acc sway g  gyro sway rad/s")
    for r in rows:
        print(f"{r['subject']:>7}  {r['posture']:<8}  {r['gravity_x']:6.3f} {r['gravity_y']:6.3f} {r['gravity_z']:6.3f}"
              f"          {r['acc_sway_g']:.4f}      {r['gyro_sway_rad_s']:.4f}")
    print("\nlinear SITTING-vs-STANDING accuracy, trained on the training subjects:")
    for name, res in linear.items():
        print(f"  {name:<10} " + "  ".join(f"{k}: {v:.3f}" for k, v in res.items()))
    print(f"\nwritten to {args.out}/posture_cues.csv and .json")


if __name__ == "__main__":
    main()
