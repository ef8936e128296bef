"""Per-client calibration of a confused class pair from the client's own unlabelled windows.

On HAPT almost every error of the default model is SITTING <-> STANDING, and the errors come in whole
subjects: one person's sitting looks like other people's standing in every cue a waist window
carries, but within one person the two postures still separate. A client holds many unlabelled
windows of its one wearer, so it can place that boundary itself: project the windows the model
assigns to the pair onto a direction fitted once on labelled training subjects, and split the
client's own projections where they separate (Otsu's threshold). No labels and no data leave the
client. It assumes the client holds windows of both classes, which Otsu's split alone cannot tell
(it cuts one cluster in two just as readily), so the split is applied only where its two sides lie
nearly as far apart as the two classes' means do in the labelled training windows.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedhar.data.recording import SensorLayout
from fedhar.data.windows import WindowSet
from fedhar.errors import CheckpointError, ConfigError, DataError


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """The cut that maximises the between-class variance of a 1-D histogram (Otsu 1979).

    Every cut inside an empty stretch between two clusters scores the same; the middle of that
    stretch is taken, the widest margin to both clusters.
    """
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    between = np.zeros(bins + 1)
    for i in range(1, bins):
        w0, w1 = counts[:i].sum(), counts[i:].sum()
        if w0 and w1:
            m0, m1 = (counts[:i] * centres[:i]).sum() / w0, (counts[i:] * centres[i:]).sum() / w1
            between[i] = w0 * w1 * (m0 - m1) ** 2
    best = np.flatnonzero(np.isclose(between, between.max()))
    return float((edges[best[0]] + edges[best[-1]]) / 2)


def pair_statistics(cues: np.ndarray, is_second: np.ndarray) -> dict[str, np.ndarray]:
    """Per class of the pair (first, second): window count, cue sums and sums of outer products (float64).

    Sums add up across clients, so a federation fits the same direction as one pooled dataset
    without any window leaving its client.
    """
    c = np.asarray(cues, dtype=np.float64)
    parts = (c[~is_second], c[is_second])
    return {"count": np.array([len(p) for p in parts], dtype=np.float64),
            "sum": np.stack([p.sum(axis=0) for p in parts]),
            "outer": np.stack([p.T @ p for p in parts])}  # fmt: skip


def direction_from_statistics(stats: dict[str, np.ndarray], ridge: float = 1e-4) -> np.ndarray:
    """Fisher's discriminant direction (pointing to the second class) from summed :func:`pair_statistics`."""
    n = stats["count"]
    if (n < 2).any():
        raise ValueError("fitting the direction needs at least two windows of each class of the pair")
    mean = stats["sum"] / n[:, None]
    covs = [(stats["outer"][k] - n[k] * np.outer(mean[k], mean[k])) / (n[k] - 1) for k in (0, 1)]
    return np.linalg.solve(covs[0] + covs[1] + ridge * np.eye(len(mean[0])), mean[1] - mean[0])


def class_gap(stats: dict[str, np.ndarray], direction: np.ndarray) -> float:
    """Distance along ``direction`` between the two class means of :func:`pair_statistics`."""
    mean = stats["sum"] / np.maximum(stats["count"], 1)[:, None]
    return float((mean[1] - mean[0]) @ direction)


def split_per_subject(pred: np.ndarray, cues: np.ndarray, subject: np.ndarray, direction: np.ndarray,
                      first: int, second: int, typical_gap: float, min_gap: float = 0.7
                      ) -> tuple[np.ndarray, dict]:  # fmt: skip
    """The model's labels with each subject's pair windows re-split at Otsu's threshold of its own projections.

    The split is applied only where the means of its two sides lie at least ``min_gap`` times
    ``typical_gap`` apart (the distance between the labelled training windows' sitting and standing
    means): two postures. Otsu also cuts the one cluster of a subject that only ever sat, but into
    halves about a third of that distance apart; such a client keeps the model's labels
    (simulations/calibration_rules.py chose 0.7 on validation subjects).
    """
    if not min_gap >= 0 or not typical_gap > 0:
        raise ValueError(f"min_gap must be >= 0 and typical_gap > 0, got {min_gap} and {typical_gap}")
    out, report = pred.copy(), {}
    for s in np.unique(subject):
        rows = np.flatnonzero((subject == s) & np.isin(pred, [first, second]))
        if len(rows) < 2:
            report[str(s)] = {"pair_windows": int(len(rows)), "applied": False}
            continue
        score = cues[rows] @ direction
        to_second = score > otsu_threshold(score)
        gap = float(score[to_second].mean() - score[~to_second].mean()) if 0 < to_second.sum() < len(rows) else 0.0
        applied = gap >= min_gap * typical_gap
        if applied:
            out[rows] = np.where(to_second, second, first)
        model_share = float((pred[rows] == second).mean())
        report[str(s)] = {"pair_windows": int(len(rows)), "model_share_second": round(model_share, 3),
                          "split_share_second": round(float(to_second.mean()), 3),
                          "gap_ratio": round(gap / typical_gap, 3), "applied": applied,
                          "changed": int((out[rows] != pred[rows]).sum())}  # fmt: skip
    return out, report


@dataclass
class PairCalibration:
    """What a client needs to re-split a pair on its own: the pair, the cue direction and the distance between
    the two classes along it (both fitted once, on labelled windows)."""

    first: str
    second: str
    direction: np.ndarray
    typical_gap: float
    min_gap: float = 0.7

    @classmethod
    def fit(cls, ws: WindowSet, pair: tuple[str, str], min_gap: float = 0.7) -> "PairCalibration":
        """Fisher's direction between the pair in posture-cue space, from labelled (training) windows."""
        return cls.from_statistics(labelled_pair_statistics(ws, pair), pair, min_gap)

    @classmethod
    def from_statistics(cls, stats: dict[str, np.ndarray], pair: tuple[str, str] | list[str],
                        min_gap: float = 0.7) -> "PairCalibration":  # fmt: skip
        """The calibration from :func:`labelled_pair_statistics` summed over clients (federated fit)."""
        try:
            direction = direction_from_statistics(stats)
        except ValueError as e:
            counts = [int(v) for v in stats["count"]]
            raise DataError(f"cannot fit the {list(pair)} calibration: the labelled windows hold {counts} of the "
                            f"pair ({e}); calibrate a pair of classes the training data holds") from None  # fmt: skip
        gap = class_gap(stats, direction)
        if not gap > 0:
            raise DataError(f"cannot fit the {list(pair)} calibration: its two classes do not separate in the "
                            f"labelled windows' posture cues (gap {gap:.3g}); calibrate a pair that differs in "
                            "posture")  # fmt: skip
        return cls(pair[0], pair[1], direction, gap, min_gap)

    def apply(self, ws: WindowSet, pred: np.ndarray) -> tuple[np.ndarray, dict]:
        """``pred`` (the model's labels of ``ws``) with every subject's pair windows re-split on its own."""
        return self.apply_to(ws.x, pred, ws.subject, list(ws.label_names), ws.layout)

    def apply_to(self, x: np.ndarray, pred: np.ndarray, subject: np.ndarray, label_names: list[str],
                 layout: SensorLayout) -> tuple[np.ndarray, dict]:  # fmt: skip
        """The same on raw windows ``x`` [N, C, T] of ``layout`` (e.g. one recording: one subject)."""
        first, second = _pair_indices(label_names, (self.first, self.second))
        return split_per_subject(pred, posture_cues(layout, x), subject, self.direction, first, second,
                                 self.typical_gap, self.min_gap)  # fmt: skip

    def score(self, ws: WindowSet, pred: np.ndarray) -> dict:
        """Metrics on ``ws`` of the model's labels ``pred`` after every subject re-splits the pair, with the
        per-subject report."""
        from fedhar.metrics import classification_metrics

        calibrated, per_subject = self.apply(ws, pred)
        return {**classification_metrics(ws.y, calibrated, list(ws.label_names)), "per_subject": per_subject}

    def to_json(self) -> dict:
        return {"pair": [self.first, self.second], "direction": [float(v) for v in self.direction],
                "typical_gap": self.typical_gap, "min_gap": self.min_gap}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict) -> "PairCalibration":
        if "typical_gap" not in d:
            raise CheckpointError("the stored calibration has no typical_gap (an older fedhar wrote it, before the gap "
                                  "guard); refit it with `fedhar evaluate ... --calibrate-from SUBJECTS`")  # fmt: skip
        return cls(d["pair"][0], d["pair"][1], np.asarray(d["direction"], dtype=np.float64),
                   float(d["typical_gap"]), float(d["min_gap"]))  # fmt: skip


def stored_calibration(checkpoint: str | Path) -> PairCalibration | None:
    """The calibration a checkpoint stores (``train.client_calibration``), if any."""
    from fedhar.model.state import read_checkpoint_info

    stored = read_checkpoint_info(checkpoint).get("client_calibration")
    return None if stored is None else PairCalibration.from_json(stored)


#: what to do when a checkpoint stores no calibration
NO_STORED_CALIBRATION = "train with train.client_calibration=[FIRST,SECOND] to store one"


def labelled_pair_statistics(ws: WindowSet, pair: tuple[str, str] | list[str]) -> dict[str, np.ndarray]:
    """:func:`pair_statistics` of the labelled windows ``ws`` (what a federated client sends once, at setup)."""
    first, second = _pair_indices(list(ws.label_names), tuple(pair))
    in_pair = np.isin(ws.y, [first, second])
    if not in_pair.any():
        d = num_posture_cues(ws.layout)
        return {"count": np.zeros(2), "sum": np.zeros((2, d)), "outer": np.zeros((2, d, d))}
    return pair_statistics(posture_cues(ws.layout, ws.x[in_pair]), ws.y[in_pair] == second)


def num_posture_cues(layout: SensorLayout) -> int:
    """Length of a posture-cue vector: gravity direction (3) and the log sway of every channel."""
    return layout.num_channels + 3


def check_pair(label_names: list[str], pair: list[str] | tuple[str, str]) -> None:
    """Fail early (before training) when the pair is not two classes of the data."""
    _pair_indices(list(label_names), tuple(pair))


def posture_cues(layout: SensorLayout, x: np.ndarray) -> np.ndarray:
    """Gravity direction and log sway of raw windows ``x`` [N, C, T] of ``layout`` (``WindowCues.cues``)."""
    from fedhar.model.frontend import WindowCues

    cue_net = WindowCues(layout.group_dict)
    if cue_net.acc_index is None:
        raise DataError("posture calibration needs a 3-axis `acc` sensor group in the data")
    return cue_net.cues(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _pair_indices(label_names: list[str], pair: tuple[str, str]) -> tuple[int, int]:
    missing = [c for c in pair if c not in label_names]
    if missing:
        close = {c: difflib.get_close_matches(c.upper(), label_names, n=1, cutoff=0.8) for c in missing}
        hint = "".join(f"; `{c}`: did you mean `{m[0]}`?" for c, m in close.items() if m)
        raise ConfigError(f"calibration pair {list(pair)}: {missing} not among the classes {list(label_names)}{hint}")
    if pair[0] == pair[1]:
        raise ConfigError(f"calibration pair {list(pair)} must be two different classes of {list(label_names)}")
    return label_names.index(pair[0]), label_names.index(pair[1])
