"""Continuous recordings: what every dataset loader returns, before windowing.

Loaders convert to canonical units (acceleration in g, angular velocity in rad/s) so that
everything downstream can mix datasets without asking where a signal came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedhar.errors import DataError

#: Canonical unit of each known sensor group; loaders convert to these.
CANONICAL_UNITS = {"acc": "g", "gyro": "rad/s", "mag": "uT"}

#: Label value of samples outside any labelled segment.
UNLABELLED = -1


@dataclass(frozen=True)
class SensorLayout:
    """Channel names and the sensor group each belongs to (e.g. acc_x → acc)."""

    channels: tuple[str, ...]
    groups: tuple[tuple[str, tuple[int, ...]], ...]
    units: tuple[tuple[str, str], ...]

    @classmethod
    def from_groups(cls, groups: dict[str, list[str]], units: dict[str, str] | None = None) -> "SensorLayout":
        """Build from ``{"acc": ["acc_x", ...], "gyro": [...]}`` keeping group order."""
        channels: list[str] = []
        group_index: list[tuple[str, tuple[int, ...]]] = []
        for name, chans in groups.items():
            start = len(channels)
            channels.extend(chans)
            group_index.append((name, tuple(range(start, len(channels)))))
        units = units or {g: CANONICAL_UNITS.get(g, "unknown") for g in groups}
        return cls(tuple(channels), tuple(group_index), tuple((g, units[g]) for g in groups))

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def group_dict(self) -> dict[str, list[int]]:
        return {g: list(idx) for g, idx in self.groups}

    def to_json(self) -> dict:
        return {
            "channels": list(self.channels),
            "groups": {g: list(idx) for g, idx in self.groups},
            "units": dict(self.units),
        }

    @classmethod
    def from_json(cls, d: dict) -> "SensorLayout":
        return cls(
            tuple(d["channels"]),
            tuple((g, tuple(int(i) for i in idx)) for g, idx in d["groups"].items()),
            tuple(d["units"].items()),
        )

    def select(self, group_names: list[str]) -> tuple["SensorLayout", list[int]]:
        """Layout restricted to some groups, and the channel indices to keep."""
        known = self.group_dict
        unknown = [g for g in group_names if g not in known]
        if unknown:
            raise DataError(f"sensor groups {unknown} not in the data (it has {list(known)}); fix the `data.sensors` list")
        keep: list[int] = []
        groups: dict[str, list[str]] = {}
        for g in group_names:
            keep.extend(known[g])
            groups[g] = [self.channels[i] for i in known[g]]
        units = dict(self.units)
        return SensorLayout.from_groups(groups, {g: units[g] for g in group_names}), keep


#: The 6-axis layout of a phone or watch IMU, the most common case.
IMU6 = SensorLayout.from_groups(
    {"acc": ["acc_x", "acc_y", "acc_z"], "gyro": ["gyro_x", "gyro_y", "gyro_z"]}
)


@dataclass
class Recording:
    """One continuous multichannel recording with a label per sample (``UNLABELLED`` outside segments)."""

    signal: np.ndarray  # float32 [T, C]
    labels: np.ndarray  # int64 [T]
    sample_rate: float
    subject: str
    session: str
    dataset: str
    device: str = "unknown"
    placement: str = "unknown"
    layout: SensorLayout = field(default=IMU6)
    source: str = ""  # file the signal came from, for error messages

    def __post_init__(self) -> None:
        self.signal = np.asarray(self.signal, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        where = self.source or f"{self.dataset} subject {self.subject} session {self.session}"
        if self.signal.ndim != 2 or self.signal.shape[1] != self.layout.num_channels:
            raise DataError(
                f"{where}: signal shape {self.signal.shape} does not match the {self.layout.num_channels} "
                f"channels {list(self.layout.channels)}"
            )
        if self.labels.shape != (self.signal.shape[0],):
            raise DataError(f"{where}: {self.labels.shape[0]} labels for {self.signal.shape[0]} samples")
        if not self.sample_rate > 0:
            raise DataError(f"{where}: sample rate must be positive, got {self.sample_rate}")

    @property
    def duration_s(self) -> float:
        return self.signal.shape[0] / self.sample_rate


@dataclass
class RecordingSet:
    """All recordings of one dataset and the names of its label ids (``label_names[i]`` is label i)."""

    recordings: list[Recording]
    label_names: list[str]
    dataset: str
    skipped: list[str] = field(default_factory=list)  # reported, documented skips

    @property
    def layout(self) -> SensorLayout:
        return self.recordings[0].layout

    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.recordings}, key=natural_key)

    def summary(self) -> dict:
        """What `fedhar data info` prints: subjects, devices, placements, classes, hours."""
        counts = np.zeros(len(self.label_names), dtype=np.int64)
        for r in self.recordings:
            lab = r.labels[r.labels >= 0]
            counts += np.bincount(lab, minlength=len(self.label_names))[: len(self.label_names)]
        hours = sum(r.duration_s for r in self.recordings) / 3600
        labelled_hours = sum(float((r.labels >= 0).sum()) / r.sample_rate for r in self.recordings) / 3600
        return {
            "dataset": self.dataset,
            "recordings": len(self.recordings),
            "subjects": self.subjects(),
            "devices": sorted({r.device for r in self.recordings}),
            "placements": sorted({r.placement for r in self.recordings}),
            "sample_rates_hz": sorted({float(r.sample_rate) for r in self.recordings}),
            "channels": list(self.layout.channels),
            "units": dict(self.layout.units),
            "classes": {name: int(n) for name, n in zip(self.label_names, counts)},
            "hours": round(hours, 3),
            "labelled_hours": round(labelled_hours, 3),
            "skipped": list(self.skipped),
        }


def natural_key(s: str) -> tuple:
    """Sort key putting subject "2" before "10" (ids are strings, often numeric)."""
    return (0, int(s), "") if s.isdecimal() else (1, 0, s)  # isdigit() admits "²", which int() refuses


def segments_to_labels(num_samples: int, segments: list[tuple[int, int, int]]) -> np.ndarray:
    """Per-sample labels from inclusive ``(start, end, label)`` segments; the rest is ``UNLABELLED``."""
    labels = np.full(num_samples, UNLABELLED, dtype=np.int64)
    for start, end, label in segments:
        labels[max(start, 0) : min(end + 1, num_samples)] = label
    return labels
