"""MotionSense (Malekzadeh et al. 2018), ``A_DeviceMotion_data/<activity>_<trial>/sub_<n>.csv``.

iPhone 6s in the front trouser pocket, Core Motion ``CMDeviceMotion`` at 50 Hz: ``gravity`` and
``userAcceleration`` in g, ``rotationRate`` in rad/s. One recording per (subject, trial), labelled
with the trial's activity (dws, ups, wlk, jog, sit, std: the dataset's own codes; map them with
``data.label_map``).

Sign convention: iOS reports acceleration with the opposite sign to Android (a phone lying face
up reads z = -1 g on iOS, +1 g on Android). The other loaders' datasets are Android phones or
IMUs with the Android convention, so the total acceleration is taken as
``-(userAcceleration + gravity)``: at rest the axis pointing up reads +1 g here too. Both
platforms give angular velocity with the same right-handed axes, so ``rotationRate`` is kept.

Accepted roots: the folder holding ``A_DeviceMotion_data/`` (the repository's ``data/``), that
folder itself, or the doubly nested copy some mirrors ship (``A_DeviceMotion_data/A_DeviceMotion_data``).
``data_subjects_info.csv`` is not needed (weight/height/age/gender are not used as tags).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedhar.data.loaders.common import text_errors
from fedhar.data.loaders.generic import header_index, read_records, resolve_placement
from fedhar.data.preprocess import to_canonical
from fedhar.data.recording import IMU6, Recording, RecordingSet
from fedhar.errors import DataError

NAME = "motionsense"
SAMPLE_RATE = 50.0
FOLDER = "A_DeviceMotion_data"
LABELS = ["dws", "ups", "wlk", "jog", "sit", "std"]
_TRIAL = re.compile(r"^([a-z]+)_(\d+)$")
_SUBJECT = re.compile(r"^sub_(\d+)\.csv$")
_COLUMNS = [f"{q}.{a}" for q in ("gravity", "userAcceleration", "rotationRate") for a in "xyz"]


def _trials_dir(root: Path) -> Path | None:
    for cand in (root / FOLDER / FOLDER, root / FOLDER, root):
        trials = [p for p in cand.iterdir() if p.is_dir() and _TRIAL.match(p.name)] if cand.is_dir() else []
        if any(any(p.glob("sub_*.csv")) for p in trials):
            return cand
    return None


def detect(root: Path) -> bool:
    return root.is_dir() and _trials_dir(root) is not None


def load(root: Path, placement: str | None = None) -> RecordingSet:
    resolve_placement(placement, {"pocket": "pocket"}, "pocket", "MotionSense")
    base = _trials_dir(root)
    if base is None:
        hint = " (unzip A_DeviceMotion_data.zip first)" if (root / f"{FOLDER}.zip").is_file() else ""
        raise DataError(f"{root}: no `{FOLDER}/<activity>_<trial>/sub_<n>.csv` files{hint}")
    recordings = []
    for trial_dir in sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.name):
        m = _TRIAL.match(trial_dir.name)
        if not m:
            continue
        activity, trial = m.groups()
        if activity not in LABELS:
            raise DataError(
                f"{trial_dir}: activity `{activity}` is not one of MotionSense's {LABELS}; rename or remove it"
            )
        files = list(trial_dir.glob("sub_*.csv"))
        odd = [p for p in files if not _SUBJECT.match(p.name)]
        if odd:
            raise DataError(f"{odd[0]}: expected a file name sub_<n>.csv")
        for path in sorted(files, key=lambda p: int(_SUBJECT.match(p.name)[1])):
            recordings.append(_read_trial(path, activity, trial))
    if not recordings:
        raise DataError(f"{base}: the trial folders hold no sub_<n>.csv files")
    return RecordingSet(recordings, list(LABELS), NAME)


def _read_trial(path: Path, activity: str, trial: str) -> Recording:
    with text_errors(path), path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(",")
    cols = header_index(header, str(path), _COLUMNS)
    data = read_records(path, str(path), {c: (cols[c], "f") for c in _COLUMNS}, delimiter=",", skiprows=1, first_line=1)
    if len(data[_COLUMNS[0]]) == 0:
        raise DataError(f"{path} has a header but no samples")
    gravity, user, rotation = (np.stack([data[c] for c in _COLUMNS[i : i + 3]], axis=1) for i in (0, 3, 6))
    acc = to_canonical(-(user + gravity), "acc", "g")  # iOS → Android sign convention
    rotation = to_canonical(rotation, "gyro", "rad/s")
    n = len(acc)
    return Recording(
        signal=np.concatenate([acc, rotation], axis=1),
        labels=np.full(n, LABELS.index(activity), dtype=np.int64),
        sample_rate=SAMPLE_RATE,
        subject=_SUBJECT.match(path.name)[1],
        session=f"{activity}_{trial}",
        dataset=NAME,
        device="iphone-6s",
        placement="pocket",
        layout=IMU6,
        source=str(path),
    )
