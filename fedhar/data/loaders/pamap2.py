"""PAMAP2 Physical Activity Monitoring (Reiss & Stricker 2012), ``Protocol/subject10X.dat``.

Space-separated, 54 columns, 100 Hz: timestamp (s), activityID, heart rate, then three Colibri
IMUs (hand = dominant wrist, chest, ankle) of 17 columns each: temperature, acc ±16 g (3, m/s²),
acc ±6 g (3), gyro (3, rad/s), mag (3, µT), orientation (4, invalid). The ±16 g accelerometer is
used (the ±6 g one saturates during running and jumping). Channels: acc, gyro and mag of the
IMU chosen by option ``placement`` (hand (default; tag ``wrist``, the body location the other
loaders use), chest or ankle); sensor selection downstream keeps acc+gyro by default.

Labels: the 18 protocol/optional activities, in activityID order; activityID 0 (transient
activities between them) is unlabelled.

Missing samples: dropped wireless packets appear as NaN. NaN runs of at most ``max_nan_gap``
samples (default 10 = 0.1 s) between valid samples are linearly interpolated; longer runs stay NaN,
so windowing drops the windows that touch them and lists them in ``RecordingSet.skipped``. Rows
are taken as a uniform 100 Hz stream; a timestamp jump over 0.1 s starts a new recording.

Roots: the ``PAMAP2_Dataset`` folder (``Protocol/``; ``Optional/`` too with ``optional=True``),
its parent, or a ``Protocol/`` or ``Optional/`` folder itself. Subject = 101..109, session =
``protocol`` or ``optional`` (``protocol.2`` after a time jump).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedhar.data.loaders.common import text_errors
from fedhar.data.loaders.generic import line_of_row, read_records, resolve_placement
from fedhar.data.preprocess import to_canonical
from fedhar.data.recording import UNLABELLED, Recording, RecordingSet, SensorLayout
from fedhar.errors import DataError

NAME = "pamap2"
FOLDER = "PAMAP2_Dataset"
SAMPLE_RATE = 100.0
ACTIVITIES = {
    1: "lying", 2: "sitting", 3: "standing", 4: "walking", 5: "running", 6: "cycling", 7: "nordic_walking",
    9: "watching_tv", 10: "computer_work", 11: "car_driving", 12: "ascending_stairs", 13: "descending_stairs",
    16: "vacuum_cleaning", 17: "ironing", 18: "folding_laundry", 19: "house_cleaning", 20: "playing_soccer",
    24: "rope_jumping",
}  # fmt: skip
LABELS = list(ACTIVITIES.values())
PLACEMENTS = ("hand", "chest", "ankle")
_IMU_START = {"hand": 3, "chest": 20, "ankle": 37}  # column of each IMU's temperature
_TAG = {"hand": "wrist", "chest": "chest", "ankle": "ankle"}
_ALIASES = {"hand": "hand", "wrist": "hand", "chest": "chest", "ankle": "ankle"}
COLUMNS = 54
LAYOUT = SensorLayout.from_groups(
    {"acc": ["acc_x", "acc_y", "acc_z"], "gyro": ["gyro_x", "gyro_y", "gyro_z"], "mag": ["mag_x", "mag_y", "mag_z"]}
)
_SUBJECT = re.compile(r"^subject(\d+)\.dat$")
_MAX_STEP_S = 0.1


def _folders(root: Path, optional: bool) -> list[tuple[Path, str]]:
    for base in (root / FOLDER, root):
        if (base / "Protocol").is_dir():
            found = [(base / "Protocol", "protocol")]
            if optional and (base / "Optional").is_dir():
                found.append((base / "Optional", "optional"))
            return found
    if root.is_dir() and any(root.glob("subject*.dat")):
        return [(root, "optional" if root.name.lower() == "optional" else "protocol")]
    return []


def detect(root: Path) -> bool:
    return root.is_dir() and any(any(f.glob("subject*.dat")) for f, _ in _folders(root, optional=True))


def load(root: Path, placement: str | None = None, optional: bool = False, max_nan_gap: int = 10) -> RecordingSet:
    imu = resolve_placement(placement, _ALIASES, "hand", "PAMAP2")
    folders = _folders(root, optional)
    if not folders:
        raise DataError(f"{root}: no `Protocol/subject10X.dat` files; point `data.path` at `{FOLDER}/`")
    recordings = []
    for folder, session in folders:
        files = sorted(folder.glob("subject*.dat"))
        if not files:
            raise DataError(f"{folder} holds no subject10X.dat files")
        for path in files:
            m = _SUBJECT.match(path.name)
            if not m:
                raise DataError(f"{path}: expected a file name subject<id>.dat")
            recordings.extend(_read_subject(path, m[1], session, imu, max_nan_gap))
    return RecordingSet(recordings, list(LABELS), NAME)


def _read_subject(path: Path, subject: str, session: str, imu: str, max_nan_gap: int) -> list[Recording]:
    start = _IMU_START[imu]
    fields = {"t": (0, "f"), "activity": (1, "f")}
    fields |= {f"acc{a}": (start + 1 + i, "f") for i, a in enumerate("xyz")}
    fields |= {f"gyro{a}": (start + 7 + i, "f") for i, a in enumerate("xyz")}
    fields |= {f"mag{a}": (start + 10 + i, "f") for i, a in enumerate("xyz")}
    with text_errors(path), path.open(encoding="utf-8") as f:
        width = len(f.readline().split())
    if width != COLUMNS:
        raise DataError(f"{path} line 1: {width} columns, a PAMAP2 .dat file has {COLUMNS}")
    rec = read_records(path, str(path), fields)
    if len(rec["t"]) == 0:
        raise DataError(f"{path} is empty")
    lut = np.full(max(ACTIVITIES) + 1, -2, dtype=np.int64)  # -2: not a PAMAP2 activity
    lut[0] = UNLABELLED
    lut[list(ACTIVITIES)] = np.arange(len(ACTIVITIES))
    raw_ids = rec["activity"]
    ids = np.where(np.isfinite(raw_ids), raw_ids, -1).astype(np.int64)
    unknown = np.flatnonzero(
        (ids != raw_ids) | (ids < 0) | (ids >= len(lut)) | (lut[np.clip(ids, 0, len(lut) - 1)] == -2)
    )
    if len(unknown):
        raise DataError(
            f"{path} line {line_of_row(path, int(unknown[0]))}: activityID {raw_ids[unknown[0]]:g} is not a "
            f"PAMAP2 activity (0 or {sorted(ACTIVITIES)}); fix that line"
        )
    labels = lut[ids]
    group = {g: np.stack([rec[f"{g}{a}"] for a in "xyz"], axis=1) for g in ("acc", "gyro", "mag")}
    signal = np.concatenate(
        [to_canonical(group["acc"], "acc", "m/s^2"), to_canonical(group["gyro"], "gyro", "rad/s"),
         to_canonical(group["mag"], "mag", "uT")], axis=1,
    )  # fmt: skip
    signal = fill_short_nan_runs(signal, max_nan_gap)
    t = rec["t"]
    cuts = np.flatnonzero((np.diff(t) > _MAX_STEP_S) | (np.diff(t) <= 0)) + 1
    bounds = np.concatenate([[0], cuts, [len(t)]])
    spans = list(zip(bounds[:-1], bounds[1:]))
    return [
        Recording(
            signal=signal[a:b], labels=labels[a:b], sample_rate=SAMPLE_RATE, subject=subject,
            session=session if len(spans) == 1 else f"{session}.{k}", dataset=NAME, device="colibri-imu",
            placement=_TAG[imu], layout=LAYOUT, source=str(path),
        )  # fmt: skip
        for k, (a, b) in enumerate(spans, start=1)
    ]


def fill_short_nan_runs(signal: np.ndarray, max_len: int) -> np.ndarray:
    """Linearly interpolate NaN runs of at most ``max_len`` samples that have valid samples on both sides."""
    out = signal.copy()
    n = len(out)
    for c in range(out.shape[1]):
        col = out[:, c]
        bad = ~np.isfinite(col)
        if not bad.any() or bad.all():
            continue
        edges = np.diff(np.concatenate([[0], bad.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # runs [start, end)
        short = (ends - starts <= max_len) & (starts > 0) & (ends < n)
        if short.any():
            fill = np.concatenate([np.arange(a, b) for a, b in zip(starts[short], ends[short])])
            good = np.flatnonzero(~bad)
            col[fill] = np.interp(fill, good, col[good])
    return out
