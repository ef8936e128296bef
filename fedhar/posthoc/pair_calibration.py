"""Per-client calibration of a confused class pair from the client's own unlabelled windows (``pair-calibration``).

On HAPT almost every error of the default model is SITTING <-> STANDING, and the errors come in whole
subjects: one person's sitting looks like other people's standing in every cue a waist window
carries, but within one person the two postures still separate. A client holds many unlabelled
windows of its one wearer, so it can place that boundary itself: project the windows the model
assigns to the pair onto a direction fitted once on labelled training subjects, and split the
client's own projections where they separate (Otsu's threshold). No labels and no data leave the
client. It assumes the client holds windows of both classes, which Otsu's split alone cannot tell
(it cuts one cluster in two just as readily), so the split is applied only where its two sides lie
nearly as far apart as the two classes' means do in the labelled training windows.

It is the first post-hoc adapter (fedhar/posthoc/base.py): ``train.posthoc: {name: pair-calibration,
classes: [SITTING, STANDING]}``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedhar.errors import CheckpointError, ConfigError, DataError
from fedhar.posthoc.base import PostHocAdapter, PostHocConfig, StatisticsSpec, register

if TYPE_CHECKING:
    from fedhar.data.recording import SensorLayout
    from fedhar.data.windows import WindowSet

NAME = "pair-calibration"
#: the model.json key this state was stored under before ``posthoc`` (``train.client_calibration``)
LEGACY_CHECKPOINT_KEY = "client_calibration"


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
    (0.7 was chosen on validation subjects: docs/research/sitting-standing.md).
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
class PairCalibration(PostHocAdapter):
    """What a client needs to re-split a pair on its own: the pair, the cue direction and the distance between
    the two classes along it (both fitted once, on labelled windows)."""

    name: ClassVar[str] = NAME
    tag: ClassVar[str] = "calibrated"

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

    @property
    def pair(self) -> list[str]:
        return [self.first, self.second]

    def apply(self, x: np.ndarray, pred: np.ndarray, client: np.ndarray, label_names: list[str],
              layout: SensorLayout) -> tuple[np.ndarray, dict[str, dict]]:  # fmt: skip
        """``pred`` (the model's labels of raw windows ``x`` [N, C, T] of ``layout``) with every client's pair
        windows re-split on its own."""
        first, second = _pair_indices(label_names, (self.first, self.second))
        return split_per_subject(pred, posture_cues(layout, x), client, self.direction, first, second,
                                 self.typical_gap, self.min_gap)  # fmt: skip

    def apply_client(self, x: np.ndarray, pred: np.ndarray, label_names: list[str],
                     layout: SensorLayout) -> tuple[np.ndarray, dict]:  # fmt: skip
        report = {"pair": self.pair, "pair_windows": 0, "applied": False}
        if not len(pred):
            return pred, report
        labels, per_client = super().apply_client(x, pred, label_names, layout)
        return labels, {**report, **per_client}

    def describe(self) -> str:
        return f"per-client calibrated {'/'.join(self.pair)}"

    def clients_summary(self, per_client: dict[str, dict]) -> str:
        return f"re-split {sum(r['applied'] for r in per_client.values())} of {len(per_client)} subjects"

    def report_line(self, report: dict) -> str:
        """What the calibration did to the recordings, and why it left them alone if it did."""
        pair = "/".join(report["pair"])
        if report["pair_windows"] < 2:
            return f"calibration {pair}: not applied, the model gives the pair {report['pair_windows']} windows"
        gap = report["gap_ratio"]
        if report["applied"]:
            return (f"calibration {pair}: re-split {report['pair_windows']} windows, {report['changed']} changed "
                    f"(the split's halves lie {gap:.2f} of the training distance apart)")  # fmt: skip
        return (f"calibration {pair}: not applied, the split's halves lie only {gap:.2f} of the training distance "
                f"apart (at least {self.min_gap:.2f} needed, what one posture cut in two looks like): kept as the "
                "model labelled them")  # fmt: skip

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

    @classmethod
    def check_stored(cls, fields: Any, state: Any, where: str, labels: list[str], channels: int) -> None:
        """A stored calibration: its pair of the model's classes, direction and gap figures."""
        cal = fields.mapping(state, where)
        pair = fields.texts(fields.require(cal, "pair", where), f"{where}.pair", min_len=2, max_len=2)
        unknown = [p for p in pair if p not in labels]
        if unknown:
            raise fields.fail(f"{where}.pair", f"names {unknown}, which are not among the classes {labels}")
        fields.numbers(fields.require(cal, "direction", where), f"{where}.direction", channels + 3)
        if "typical_gap" in cal:  # older checkpoints lack it; from_json says what to do then
            fields.number(cal["typical_gap"], f"{where}.typical_gap", 0, 1e12, low_open=True)
        fields.number(fields.require(cal, "min_gap", where), f"{where}.min_gap", 0, 1e12)


@register
@dataclass
class PairCalibrationConfig(PostHocConfig):
    """``train.posthoc: {name: pair-calibration, classes: [FIRST, SECOND]}``: fit the pair's cue direction on the
    training windows (federated: from the clients' per-class cue sums), re-split it on each client."""

    name: ClassVar[str] = NAME
    adapter: ClassVar[type[PostHocAdapter]] = PairCalibration
    legacy_checkpoint_key: ClassVar[str | None] = LEGACY_CHECKPOINT_KEY

    classes: list[str] = field(default_factory=list)  # the confused pair, e.g. [SITTING, STANDING]
    min_gap: float = 0.7  # a client keeps the model's labels when its split's halves lie closer (of the class gap)

    def validate(self, path: str) -> None:
        if len(self.classes) != 2 or self.classes[0] == self.classes[1]:
            raise ConfigError(f"{path}.classes must be two different class names (e.g. [SITTING, STANDING]), "
                              f"got {self.classes}")  # fmt: skip
        if not self.min_gap >= 0:
            raise ConfigError(f"{path}.min_gap must be >= 0, got {self.min_gap}")

    def check(self, label_names: list[str]) -> None:
        check_pair(label_names, self.classes)

    def statistics(self, windows: WindowSet) -> dict[str, np.ndarray]:
        return labelled_pair_statistics(windows, self.classes)  # class sums of 9 posture cues, not windows

    def statistics_spec(self, layout: SensorLayout) -> StatisticsSpec:
        d, f64 = num_posture_cues(layout), np.dtype("float64")
        return {"count": ((2,), f64), "sum": ((2, d), f64), "outer": ((2, d, d), f64)}

    def check_statistics(self, stats: dict[str, np.ndarray], num_windows: int) -> None:
        count = stats["count"]
        if (count < 0).any() or (count != np.round(count)).any() or count.sum() > num_windows:
            raise ValueError(f"pair counts {count.tolist()} of {num_windows} windows")

    def from_statistics(self, totals: dict[str, np.ndarray]) -> PairCalibration:
        return PairCalibration.from_statistics(totals, self.classes, self.min_gap)


#: what to do when a checkpoint stores no calibration
NO_STORED_CALIBRATION = "train with `train.posthoc={name: pair-calibration, classes: [FIRST, SECOND]}` to store one"


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
    import torch

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
