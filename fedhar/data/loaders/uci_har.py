"""UCI-HAR (Anguita et al. 2013), ``UCI HAR Dataset/{train,test}/Inertial Signals/``.

Waist smartphone (Samsung Galaxy S2), 50 Hz; ``total_acc_*`` in g, ``body_gyro_*`` in rad/s.
The archive ships 128-sample windows with 50 % overlap, not recordings. To keep one downstream
path (recordings → windows), each run of windows is stitched back into its continuous signal:

    rows i and i+1 belong to one run when they have the same subject and activity and the last
    64 samples of row i equal the first 64 of row i+1 on all six channels (to 1e-6, the files'
    print precision); a run's signal is its first window followed by the second half of each
    further window.

Windowing a run again with 128 samples and 50 % overlap therefore gives back exactly the
official windows (the same count and values); a row that continues nothing becomes a 128-sample
recording of its own, so even rows that do not overlap are kept, each as one window. Sessions
are ``train-0001`` / ``test-0001`` (split and run number) so the official split stays visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedhar.data.loaders.common import read_activity_labels, read_numeric_table, require_dir
from fedhar.data.loaders.generic import resolve_placement
from fedhar.data.recording import IMU6, Recording, RecordingSet
from fedhar.errors import DataError

NAME = "uci_har"
SAMPLE_RATE = 50.0
WINDOW = 128
FOLDER = "UCI HAR Dataset"
DEFAULT_LABELS = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]
_SIGNALS = [f"total_acc_{a}" for a in "xyz"] + [f"body_gyro_{a}" for a in "xyz"]


def _dataset_dir(root: Path) -> Path | None:
    for cand in (root / FOLDER, root):
        if (cand / "train" / "Inertial Signals").is_dir() or (cand / "test" / "Inertial Signals").is_dir():
            return cand
    return None


def detect(root: Path) -> bool:
    return root.is_dir() and _dataset_dir(root) is not None


def load(root: Path, placement: str | None = None) -> RecordingSet:
    """Both official splits, stitched into runs (see the module docstring)."""
    resolve_placement(placement, {"waist": "waist"}, "waist", "UCI-HAR")
    base = _dataset_dir(root)
    if base is None:
        require_dir(root / FOLDER / "train" / "Inertial Signals", f"the folder holding `{FOLDER}/`")
    label_names = read_activity_labels(base / "activity_labels.txt", DEFAULT_LABELS)
    recordings: list[Recording] = []
    for split in ("train", "test"):
        if (base / split).is_dir():
            recordings.extend(_load_split(base / split, split, label_names))
    if not recordings:
        raise DataError(f"{base}: neither train/ nor test/ holds windows")
    return RecordingSet(recordings, label_names, NAME)


def _load_split(folder: Path, split: str, label_names: list[str]) -> list[Recording]:
    signals = require_dir(folder / "Inertial Signals", f"the `{FOLDER}` folder of the UCI-HAR archive")
    windows = np.stack(
        [read_numeric_table(signals / f"{name}_{split}.txt", columns=WINDOW) for name in _SIGNALS], axis=2
    )  # [N, 128, 6]
    subject_path, label_path = folder / f"subject_{split}.txt", folder / f"y_{split}.txt"
    subjects = read_numeric_table(subject_path, columns=1)[:, 0].astype(np.int64)
    labels = read_numeric_table(label_path, columns=1)[:, 0].astype(np.int64)
    for path, arr in ((subject_path, subjects), (label_path, labels)):
        if len(arr) != len(windows):
            raise DataError(f"{path} has {len(arr)} lines but Inertial Signals/ has {len(windows)} windows")
    bad = np.flatnonzero((labels < 1) | (labels > len(label_names)))
    if len(bad):
        raise DataError(
            f"{label_path} line {bad[0] + 1}: activity {labels[bad[0]]} is outside activity_labels.txt "
            f"(1..{len(label_names)}); fix the label"
        )
    half = WINDOW // 2
    overlap_ok = np.all(
        np.abs(windows[:-1, half:] - windows[1:, :half]) <= 1e-6 * (1 + np.abs(windows[1:, :half])), axis=(1, 2)
    )
    continues = (subjects[1:] == subjects[:-1]) & (labels[1:] == labels[:-1]) & overlap_ok
    starts = np.concatenate([[0], np.flatnonzero(~continues) + 1])
    ends = np.concatenate([starts[1:], [len(windows)]])
    recordings = []
    for run, (a, b) in enumerate(zip(starts, ends), start=1):
        signal = np.concatenate([windows[a], windows[a + 1 : b, half:].reshape(-1, len(_SIGNALS))])
        recordings.append(
            Recording(
                signal=signal,
                labels=np.full(len(signal), labels[a] - 1, dtype=np.int64),
                sample_rate=SAMPLE_RATE,
                subject=str(subjects[a]),
                session=f"{split}-{run:04d}",
                dataset=NAME,
                device="samsung-galaxy-s2",
                placement="waist",
                layout=IMU6,
                source=f"{signals} rows {a + 1}-{b}",
            )
        )
    return recordings

