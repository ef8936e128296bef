"""Which unsupervised rule should a client use to re-split the confused pair, and when should it abstain?

The per-client calibration (client_calibration.py, fedhar/calibration.py) splits a client's
sitting/standing windows at a threshold of their posture-cue projections, and must abstain on a
client that only ever sat (or stood): the threshold cuts its one cluster in two just as readily.
The first guard, a share rule (both sides >= 20 % of the pair windows, for the model and for the
split), had two weaknesses: it split one-posture clients whenever the model already mixed them
up, and it refused two-posture clients the model called mostly one posture -- exactly the ones
the calibration is for (on whole raw recordings it gained half of what it gained on segment
windows). This recipe scores every combination of a threshold rule and a guard on the same
predictions, per client, on the runs' validation subjects (to choose) and test subjects (to
report):

threshold rules   otsu (between-class variance; fedhar's), min-error (Kittler & Illingworth 1986:
                  two Gaussians of their own size and spread), gmm (two-component 1-D Gaussian
                  mixture by EM, cut where the posteriors cross)
guards            share (both sides of the model and of the split >= --min-share), separation
                  (Ashman's D of the two sides >= a bound), gap (the means of the two sides at
                  least a bound times the training windows' distance between the pair's means
                  apart; fedhar's, with fedhar's own code for otsu), gap+share
clients           every held-out subject's segment windows (two postures), the same minus one
                  posture (one-posture clients: the guard should abstain), and every held-out
                  subject's whole raw recordings cut as ``fedhar predict`` cuts them (transitions
                  and pauses included; scored on the windows inside labelled segments)

The model is run once per run and its predictions and cues cached under ``--out/cache``.

    python simulations/calibration_rules.py --out runs/calibration-rules runs/seed-study/base-s{0,1,2,3,4}

Writes calibration_rules.csv (one row per run x rule x guard x bound), calibration_rules_summary.csv
(means over the runs), .json (both, versions, git revision) and .png.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from predict_recordings import window_truth  # noqa: E402
from run_inputs import add_run_arguments, check_runs, checkpoint_fingerprint, provenance, run_config  # noqa: E402

from fedhar.calibration import PairCalibration, otsu_threshold, posture_cues, split_per_subject  # noqa: E402
from fedhar.metrics import classification_metrics  # noqa: E402
from fedhar.results.run import write_json_atomic  # noqa: E402

RULES = ("otsu", "min-error", "gmm")


def collect(run: Path, pair: tuple[str, str], cache_dir: Path, overrides: list[str]) -> dict[str, np.ndarray]:
    """Predictions, cues, labels and client ids of the run's held-out subjects: segment windows and raw recordings.

    Cached per run, keyed by the pair, the overrides and the checkpoint's files: another pair or a
    retrained checkpoint never reads an earlier cache."""
    cfg = run_config(run, overrides, roles=("train", "val", "test"))
    cache = cache_dir / f"{run.parent.name}-{run.name}-{checkpoint_fingerprint(run, pair, overrides)}.npz"
    if cache.is_file():
        return dict(np.load(cache, allow_pickle=False))
    from fedhar.data.loaders import load_recordings
    from fedhar.inference import conform_recording, cut_recording, windows_for_model
    from fedhar.model.har_model import predict_logits
    from fedhar.model.state import load_checkpoint

    split = cfg.data.split
    model = load_checkpoint(run / "checkpoint")
    classes = list(model.data.label_names)
    ws = windows_for_model(model.data, cfg.data.path, cfg.data.dataset, None)
    train = ws.where(subject=[str(s) for s in split.train])
    calibration = PairCalibration.fit(train, pair)
    held = [str(s) for s in (*split.val, *split.test)]
    seg = ws.where(subject=held)
    out = {"direction": calibration.direction, "typical_gap": calibration.typical_gap, "classes": np.array(classes),
           "val": np.array(list(map(str, split.val))),
           "seg_pred": predict_logits(model, seg.x).argmax(axis=1), "seg_cues": posture_cues(seg.layout, seg.x),
           "seg_y": seg.y, "seg_subject": seg.subject.astype(str)}  # fmt: skip

    rs = load_recordings(cfg.data.path, cfg.data.dataset)
    xs, ys, clients = [], [], []
    for rec in rs.recordings:
        if rec.subject not in held:
            continue
        rec = conform_recording(model.data, rec)
        starts, x, finite = cut_recording(model.data, rec)  # as `fedhar predict` cuts a CSV of this recording
        xs.append(x[finite])
        ys.append(window_truth(rec, rs.label_names, classes, starts[finite], model.data.window_len))
        clients.append(np.full(int(finite.sum()), f"{rec.subject}/{rec.session}"))
    x = np.concatenate(xs)
    out.update(raw_pred=predict_logits(model, x).argmax(axis=1), raw_cues=posture_cues(model.data.layout, x),
               raw_y=np.concatenate(ys), raw_client=np.concatenate(clients))  # fmt: skip
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache.with_name(cache.stem + ".tmp.npz"), **out)
    cache.with_name(cache.stem + ".tmp.npz").replace(cache)
    return out


def min_error(s: np.ndarray, bins: int = 64) -> float:
    """Kittler & Illingworth's minimum-error threshold: the cut whose two sides fit two Gaussians best."""
    counts, edges = np.histogram(s, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    p = counts / counts.sum()
    best, cut = np.inf, float(np.median(s))
    for i in range(1, bins):
        w0, w1 = p[:i].sum(), p[i:].sum()
        if w0 < 1e-6 or w1 < 1e-6:
            continue
        m0, m1 = (p[:i] * centres[:i]).sum() / w0, (p[i:] * centres[i:]).sum() / w1
        v0 = (p[:i] * (centres[:i] - m0) ** 2).sum() / w0
        v1 = (p[i:] * (centres[i:] - m1) ** 2).sum() / w1
        if v0 <= 0 or v1 <= 0:
            continue
        j = 1 + 2 * (w0 * np.log(np.sqrt(v0)) + w1 * np.log(np.sqrt(v1))) - 2 * (w0 * np.log(w0) + w1 * np.log(w1))
        if j < best:
            best, cut = j, float(edges[i])
    return cut


def gmm(s: np.ndarray, iters: int = 200) -> float:
    """Two 1-D Gaussians by EM from Otsu's split; the cut between their means where the posteriors cross."""
    t = otsu_threshold(s)
    lo, hi = s[s <= t], s[s > t]
    if len(lo) < 2 or len(hi) < 2:
        return t
    w, m, v = np.array([len(lo), len(hi)]) / len(s), np.array([lo.mean(), hi.mean()]), np.array([lo.var(), hi.var()])
    v = np.maximum(v, 1e-6 * s.var() + 1e-12)
    for _ in range(iters):
        dens = w / np.sqrt(2 * np.pi * v) * np.exp(-((s[:, None] - m) ** 2) / (2 * v))
        r = dens / np.maximum(dens.sum(axis=1, keepdims=True), 1e-300)
        n = r.sum(axis=0)
        if (n < 2).any():
            return t
        w, m = n / len(s), (r * s[:, None]).sum(axis=0) / n
        v = np.maximum((r * (s[:, None] - m) ** 2).sum(axis=0) / n, 1e-6 * s.var() + 1e-12)
    grid = np.linspace(min(m), max(m), 512)
    logp = np.log(w) - 0.5 * np.log(v) - (grid[:, None] - m) ** 2 / (2 * v)
    return float(grid[np.argmin(np.abs(logp[:, 0] - logp[:, 1]))])


CUTS = {"otsu": otsu_threshold, "min-error": min_error, "gmm": gmm}


def ashman_d(a: np.ndarray, b: np.ndarray) -> float:
    """Separation of two groups in pooled standard deviations (Ashman et al. 1994); > 2 reads as two clusters."""
    if len(a) < 2 or len(b) < 2:
        return 0.0
    return float(np.sqrt(2) * abs(a.mean() - b.mean()) / np.sqrt(a.var() + b.var() + 1e-12))


def resplit(pred: np.ndarray, cues: np.ndarray, clients: np.ndarray, data: dict, first: int, second: int,
            rule: str, guard: str, bound: float, min_share: float) -> tuple[np.ndarray, int]:  # fmt: skip
    """The model's labels with each client's pair windows re-split by ``rule`` where ``guard`` lets it.

    Otsu with the gap guard is fedhar's own rule, run through fedhar's own code.
    """
    direction, typical_gap = data["direction"], float(data["typical_gap"])
    if (rule, guard) == ("otsu", "gap"):
        out, report = split_per_subject(pred, cues, clients, direction, first, second, typical_gap, bound)
        return out, sum(r["applied"] for r in report.values())
    out, applied = pred.copy(), 0
    for c in np.unique(clients):
        rows = np.flatnonzero((clients == c) & np.isin(pred, [first, second]))
        if len(rows) < 2:
            continue
        s = cues[rows] @ direction
        to_second = s > CUTS[rule](s)
        if to_second.all() or not to_second.any():
            continue
        shares = ((pred[rows] == second).mean(), to_second.mean())
        ok = {"share": lambda: all(min(v, 1 - v) >= min_share for v in shares),
              "separation": lambda: ashman_d(s[to_second], s[~to_second]) >= bound,
              "gap": lambda: s[to_second].mean() - s[~to_second].mean() >= bound * typical_gap}  # fmt: skip
        if all(ok[g]() for g in guard.split("+")):
            out[rows] = np.where(to_second, second, first)
            applied += 1
    return out, applied


def score(data: dict, rule: str, guard: str, bound: float, min_share: float, pair: tuple[str, str]) -> dict:
    """Validation and test macro-F1 on segment windows and raw recordings, and one-posture clients' pair accuracy."""
    classes = list(data["classes"])
    first, second = classes.index(pair[0]), classes.index(pair[1])
    val, row = set(data["val"]), {}
    for role in ("val", "test"):
        m = np.isin(data["seg_subject"], list(val)) == (role == "val")
        pred, cues, y, subj = data["seg_pred"][m], data["seg_cues"][m], data["seg_y"][m], data["seg_subject"][m]
        cal, n = resplit(pred, cues, subj, data, first, second, rule, guard, bound, min_share)
        row[f"{role}_segments"] = classification_metrics(y, cal, classes)["macro_f1"]
        row[f"{role}_segments_split"] = f"{n}/{len(np.unique(subj))}"
        # one-posture clients: each subject without one class of the pair; accuracy on the class it kept
        acc, splits = [], 0
        for s in np.unique(subj):
            for kept, dropped in ((first, second), (second, first)):
                keep = (subj == s) & (y != dropped)
                if not (y[keep] == kept).any():
                    continue
                cal1, n1 = resplit(pred[keep], cues[keep], subj[keep], data, first, second, rule, guard, bound,
                                   min_share)  # fmt: skip
                acc.append(float((cal1[y[keep] == kept] == kept).mean()))
                splits += n1
        row[f"{role}_one_posture_pair_acc"] = float(np.mean(acc)) if acc else float("nan")
        row[f"{role}_one_posture_split"] = f"{splits}/{len(acc)}"
        rm = np.isin([c.split("/")[0] for c in data["raw_client"]], list(val)) == (role == "val")
        pred, cues, y, cl = data["raw_pred"][rm], data["raw_cues"][rm], data["raw_y"][rm], data["raw_client"][rm]
        cal, n = resplit(pred, cues, cl, data, first, second, rule, guard, bound, min_share)
        scored = y >= 0
        row[f"{role}_recordings"] = classification_metrics(y[scored], cal[scored], classes)["macro_f1"]
        row[f"{role}_recordings_split"] = f"{n}/{len(np.unique(cl))}"
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, "run folders of `fedhar train` (checkpoint/ and config.yaml)")
    p.add_argument("--out", type=Path, default=Path("runs/calibration-rules"))
    p.add_argument("--pair", nargs=2, default=["SITTING", "STANDING"], metavar=("FIRST", "SECOND"))
    p.add_argument("--min-share", type=float, default=0.2, help="the share guard's bound (fedhar's default)")
    p.add_argument("--separations", type=float, nargs="+", default=[2.5, 3.0],
                   help="Ashman's D bounds to try for the separation guard")  # fmt: skip
    p.add_argument("--gaps", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8],
                   help="gap guard bounds: the split's gap over the training windows' distance between the "
                        "pair's means")  # fmt: skip
    args = p.parse_args()
    check_runs(args.runs)
    pair = tuple(args.pair)
    bounds = {"share": [args.min_share], "separation": args.separations, "gap": args.gaps, "gap+share": args.gaps}

    rows = []
    for run in args.runs:
        data = collect(run, pair, args.out / "cache", args.overrides)
        base = {"run": f"{run.parent.name}/{run.name}"}
        none = score(data, "otsu", "share", 0.0, 1.0, pair)  # min_share 1: never applied, the model's labels
        rows.append({**base, "rule": "as-trained", "guard": "-", "bound": 0.0,
                     **{k: round(v, 4) for k, v in none.items() if isinstance(v, float)}})  # fmt: skip
        for rule, (guard, values) in itertools.product(RULES, bounds.items()):
            for bound in values:
                r = score(data, rule, guard, bound, args.min_share, pair)
                rows.append({**base, "rule": rule, "guard": guard, "bound": bound,
                             **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}})  # fmt: skip
        print(f"{run}: done", flush=True)

    keys = ("val_segments", "val_recordings", "val_one_posture_pair_acc", "test_segments", "test_recordings",
            "test_one_posture_pair_acc")  # fmt: skip
    summary: dict[tuple, list[dict]] = {}
    for r in rows:
        summary.setdefault((r["rule"], r["guard"], r["bound"]), []).append(r)
    table = [{"rule": rule, "guard": guard, "bound": bound, "runs": len(rs),
              **{k: round(float(np.mean([x[k] for x in rs])), 4) for k in keys}}
             for (rule, guard, bound), rs in summary.items()]  # fmt: skip
    for t in table:
        print("  ".join(f"{k} {v}" for k, v in t.items()))

    fig, ax = plt.subplots(figsize=(11, 4))
    x = np.arange(len(table))
    for i, k in enumerate(("val_segments", "val_recordings", "val_one_posture_pair_acc")):
        ax.bar(x + (i - 1) * 0.27, [t[k] for t in table], 0.27, label=k)
    ax.set(ylim=(0.5, 1.0), xticks=x, ylabel="validation subjects (mean over runs)")
    ax.set_xticklabels([f"{t['rule']} / {t['guard']} {t['bound']:g}" for t in table], rotation=70, ha="right",
                       fontsize=6)  # fmt: skip
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    write_table(args.out, rows, table, fig, {"runs": [str(r) for r in args.runs], "pair": args.pair,
                                             "min_share": args.min_share, "overrides": args.overrides})  # fmt: skip


def write_table(out: Path, rows: list[dict], table: list[dict], fig, record: dict) -> None:
    """calibration_rules.csv (run x rule x guard), calibration_rules_summary.csv (means), .json and .png."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    for stem, rs in (("calibration_rules", rows), ("calibration_rules_summary", table)):
        with (out / f"{stem}.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rs for k in r)), lineterminator="\n")
            w.writeheader()
            w.writerows(rs)
    write_json_atomic(out / "calibration_rules.json", {**record, "summary": table, "per_run": rows, **provenance()})
    fig.tight_layout()
    fig.savefig(out / "calibration_rules.png", dpi=120)
    print(f"written to {out}/calibration_rules.csv, calibration_rules_summary.csv, .json and .png")


if __name__ == "__main__":
    main()
