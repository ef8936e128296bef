"""Resampling, unit harmonisation, label mapping and per-channel normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedhar.data.recording import UNLABELLED, Recording, RecordingSet
from fedhar.data.windows import WindowSet
from fedhar.errors import DataError

G = 9.80665  # m/s² per g

#: factor that converts a unit into the canonical one of its group
UNIT_FACTORS = {
    ("acc", "g"): 1.0,
    ("acc", "m/s^2"): 1.0 / G,
    ("acc", "m/s2"): 1.0 / G,
    ("gyro", "rad/s"): 1.0,
    ("gyro", "deg/s"): np.pi / 180.0,
    ("mag", "uT"): 1.0,
}


def to_canonical(values: np.ndarray, group: str, unit: str) -> np.ndarray:
    """Convert one sensor group's samples to its canonical unit (g, rad/s)."""
    try:
        return values * UNIT_FACTORS[(group, unit)]
    except KeyError:
        known = sorted(u for g, u in UNIT_FACTORS if g == group)
        raise DataError(f"unknown unit `{unit}` for sensor group `{group}`; known: {known}") from None


def resample_recording(rec: Recording, rate: float) -> Recording:
    """Linear-interpolation resampling of signal; labels follow the nearest original sample."""
    if rec.sample_rate == rate:
        return rec
    n = rec.signal.shape[0]
    t_old = np.arange(n) / rec.sample_rate
    n_new = int(np.floor((n - 1) * rate / rec.sample_rate)) + 1
    t_new = np.arange(n_new) / rate
    signal = np.stack([np.interp(t_new, t_old, rec.signal[:, c]) for c in range(rec.signal.shape[1])], axis=1)
    nearest = np.clip(np.rint(t_new * rec.sample_rate).astype(np.int64), 0, n - 1)
    return Recording(
        signal=signal.astype(np.float32),
        labels=rec.labels[nearest],
        sample_rate=rate,
        subject=rec.subject,
        session=rec.session,
        dataset=rec.dataset,
        device=rec.device,
        placement=rec.placement,
        layout=rec.layout,
        source=rec.source,
    )


def relabel(rs: RecordingSet, classes: list[str] | None, label_map: dict[str, str] | None,
            missing_ok: bool = False) -> RecordingSet:  # fmt: skip
    """Rename labels through ``label_map`` then keep ``classes`` in the given order (others → unlabelled).

    A class the data does not have is an error (a typo, usually) unless ``missing_ok``: data scored by a
    trained model need not hold every class it knows."""
    names = [label_map.get(n, n) if label_map else n for n in rs.label_names]
    target = list(classes) if classes else list(dict.fromkeys(names))
    unknown = [c for c in target if c not in names]
    if unknown and not missing_ok:
        raise DataError(
            f"classes {unknown} are not labels of {rs.dataset} (after label_map); its labels are {names}"
        )
    lut = np.array([target.index(n) if n in target else UNLABELLED for n in names] + [UNLABELLED], dtype=np.int64)
    if missing_ok:  # scoring: say which of the data's labels the model cannot score, and which renames matched none
        used = {int(k) for r in rs.recordings for k in np.unique(r.labels) if k != UNLABELLED}
        dropped = sorted({names[k] for k in used if lut[k] == UNLABELLED})
        if dropped:
            rs.skipped.append(f"labels {dropped} are not among the model's classes {target}: their windows are not "
                              "scored (--label-map FROM=TO renames a data label to a class)")  # fmt: skip
        unmatched = sorted(set(label_map or {}) - set(rs.label_names))
        if unmatched:
            rs.skipped.append(f"label_map entries {unmatched} match no label of the data {rs.label_names}")
    for r in rs.recordings:
        r.labels = lut[r.labels]  # UNLABELLED (-1) indexes the trailing UNLABELLED entry
    rs.label_names = target
    return rs


def select_sensors(rs: RecordingSet, sensors: list[str]) -> RecordingSet:
    layout, keep = rs.layout.select(sensors)
    for r in rs.recordings:
        r.signal = np.ascontiguousarray(r.signal[:, keep])
        r.layout = layout
    return rs


@dataclass
class Normalizer:
    """Per-channel standardisation; fitted on training windows only and stored with the model."""

    mean: np.ndarray  # [C]
    std: np.ndarray  # [C]

    @classmethod
    def fit(cls, ws: WindowSet) -> "Normalizer":
        if len(ws) == 0:
            raise DataError("cannot fit normalisation on an empty training set")
        mean = ws.x.mean(axis=(0, 2), dtype=np.float64)
        std = ws.x.std(axis=(0, 2), dtype=np.float64)
        return cls(mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32))

    @classmethod
    def from_moments(cls, count: float, total: np.ndarray, total_sq: np.ndarray) -> "Normalizer":
        """From summed first and second moments (how a federation fits it without sharing data)."""
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
        return cls(mean.astype(np.float32), np.maximum(np.sqrt(var), 1e-6).astype(np.float32))

    @classmethod
    def identity(cls, channels: int) -> "Normalizer":
        return cls(np.zeros(channels, np.float32), np.ones(channels, np.float32))

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "Normalizer":
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))
