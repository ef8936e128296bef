"""UCI HAPT ``RawData/`` (Reyes-Ortiz et al. 2016): waist smartphone, 50 Hz, acc in g, gyro in rad/s.

``labels.txt`` segments (``experiment user activity start end``) are read as 0-based, inclusive
sample indices: file rows ``start`` through ``end``, counting from 0. Neither the archive's
README ("label start point, in number of signal log samples") nor the copy in
shared/data/hapt-train (".. sample indices, inclusive") states the base, and the data do not
decide it: consecutive segments abut (``start`` = previous ``end`` + 1) and all lie well inside
their files (in that copy the first start is sample 136 and every end is at least 631 samples
before its file's end), so both readings index valid rows. 1-based (MATLAB-style) indices would
shift each segment edge by one sample (20 ms), below the precision of the hand labels; without
evidence the reading stays as it is (the window counts in tests/data/test_loaders.py pin it).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedhar.data.loaders.common import read_activity_labels, read_numeric_table, require_dir
from fedhar.data.loaders.generic import resolve_placement
from fedhar.data.recording import IMU6, Recording, RecordingSet, segments_to_labels
from fedhar.errors import DataError

NAME = "hapt"
SAMPLE_RATE = 50.0
DEFAULT_LABELS = [
    "WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING",
    "STAND_TO_SIT", "SIT_TO_STAND", "SIT_TO_LIE", "LIE_TO_SIT", "STAND_TO_LIE", "LIE_TO_STAND",
]  # fmt: skip
_ACC = re.compile(r"^acc_exp(\d+)_user(\d+)\.txt$")


def detect(root: Path) -> bool:
    raw = root / "RawData"
    return (raw / "labels.txt").is_file() and any(raw.glob("acc_exp*_user*.txt"))


def load(root: Path, placement: str | None = None) -> RecordingSet:
    """One recording per experiment; labels.txt segments are inclusive sample indices (module docstring)."""
    resolve_placement(placement, {"waist": "waist"}, "waist", "HAPT")
    raw = require_dir(root / "RawData", "the HAPT archive's RawData/ folder")
    label_names = read_activity_labels(root / "activity_labels.txt", DEFAULT_LABELS)
    labels_path = raw / "labels.txt"
    table = read_numeric_table(labels_path, columns=5)
    segments: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for line, (exp, user, act, start, end) in enumerate(table.astype(np.int64), start=1):
        if not 1 <= act <= len(label_names):
            raise DataError(
                f"{labels_path} line {line}: activity {act} is outside activity_labels.txt (1..{len(label_names)})"
            )
        segments.setdefault((int(exp), int(user)), []).append((int(start), int(end), int(act) - 1))
    recordings = []
    for acc_path in sorted(raw.glob("acc_exp*_user*.txt")):
        m = _ACC.match(acc_path.name)
        if not m:
            raise DataError(f"{acc_path}: expected a file name acc_expNN_userUU.txt; rename or remove it")
        exp, user = int(m[1]), int(m[2])
        gyro_path = acc_path.with_name(acc_path.name.replace("acc_", "gyro_", 1))
        if not gyro_path.is_file():
            raise DataError(f"{gyro_path} is missing: HAPT needs a gyro file for every acc file")
        acc = read_numeric_table(acc_path, columns=3)
        gyro = read_numeric_table(gyro_path, columns=3)
        if len(acc) != len(gyro):
            raise DataError(f"{acc_path.name} has {len(acc)} samples but {gyro_path.name} has {len(gyro)}")
        recordings.append(
            Recording(
                signal=np.concatenate([acc, gyro], axis=1),
                labels=segments_to_labels(len(acc), segments.get((exp, user), [])),
                sample_rate=SAMPLE_RATE,
                subject=str(user),
                session=f"exp{exp:02d}",
                dataset=NAME,
                device="samsung-galaxy-s2",
                placement="waist",
                layout=IMU6,
                source=str(acc_path),
            )
        )
    if not recordings:
        raise DataError(f"no acc_expNN_userUU.txt files in {raw}")
    return RecordingSet(recordings, label_names, NAME)

