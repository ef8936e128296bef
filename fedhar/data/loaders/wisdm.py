"""WISDM 2019, Smartphone and Smartwatch Activity and Biometrics (Weiss et al.), ``wisdm-dataset/raw/``.

Files ``raw/{phone,watch}/{accel,gyro}/data_<subject>_{accel,gyro}_{phone,watch}.txt``, one
sample a line: ``subject,activity_code,timestamp,x,y,z;`` (timestamp in ns, acc in m/s², gyro in
rad/s, 20 Hz). Activity codes A..S (no N) are named in ``activity_key.txt`` (``walking = A``);
without it the published table is used. 51 subjects (1600-1650), each doing every activity for
about 3 minutes with a phone in the trouser pocket and a watch on the dominant wrist.

Per (subject, activity): the accel and gyro samples (separate, unpaired sensor events of one
device) are put on one uniform grid at ``sample_rate`` (default 20 Hz, native) over the span
where both have data; gaps over ``max_gap_s`` split recordings (session ``walking-1``, ...).
An activity whose two sensors never overlap is skipped and listed in ``RecordingSet.skipped``.
Option ``placement``: phone (default; also ``pocket``) or watch (``wrist``) or ``all``; the tag
is the body location, ``pocket`` or ``wrist``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedhar.data.loaders.common import read_text
from fedhar.data.loaders.generic import clean_times, fuse_streams, line_of_row, read_records, resolve_placement
from fedhar.data.preprocess import to_canonical
from fedhar.data.recording import IMU6, Recording, RecordingSet
from fedhar.errors import DataError

NAME = "wisdm"
FOLDER = "wisdm-dataset"
DEFAULT_KEY = {
    "A": "walking", "B": "jogging", "C": "stairs", "D": "sitting", "E": "standing", "F": "typing",
    "G": "teeth", "H": "soup", "I": "chips", "J": "pasta", "K": "drinking", "L": "sandwich",
    "M": "kicking", "O": "catch", "P": "dribbling", "Q": "writing", "R": "clapping", "S": "folding",
}  # fmt: skip
BODY = {"phone": "pocket", "watch": "wrist"}
DEVICE = {"phone": "android-phone", "watch": "lg-g-watch"}
PLACEMENTS = ("phone", "watch", "all")
_ALIASES = {
    "phone": "phone", "pocket": "phone", "phone-pocket": "phone",
    "watch": "watch", "wrist": "watch", "watch-wrist": "watch", "all": "all",
}  # fmt: skip
_FILE = re.compile(r"^data_(\d+)_(accel|gyro)_(phone|watch)\.txt$")
_KEY_LINE = re.compile(r"^\s*(\S.*?)\s*=\s*([A-Z])\s*$")


def _base(root: Path) -> Path | None:
    for cand in (root / FOLDER, root):
        if (cand / "raw" / "phone" / "accel").is_dir() or (cand / "raw" / "watch" / "accel").is_dir():
            return cand
    return None


def detect(root: Path) -> bool:
    return root.is_dir() and _base(root) is not None


def load(root: Path, placement: str | None = None, sample_rate: float = 20.0, max_gap_s: float = 0.5) -> RecordingSet:
    which = resolve_placement(placement, _ALIASES, "phone", "WISDM")
    kinds = ["phone", "watch"] if which == "all" else [which]
    base = _base(root)
    if base is None:
        raise DataError(f"{root}: no `{FOLDER}/raw/phone/accel/` folder; point `data.path` at the unpacked archive")
    key = _read_key(base / "activity_key.txt")
    codes = sorted(key)
    label_names = [key[c] for c in codes]
    recordings, skipped = [], []
    for kind in kinds:
        acc_dir, gyro_dir = base / "raw" / kind / "accel", base / "raw" / kind / "gyro"
        for folder in (acc_dir, gyro_dir):
            if not folder.is_dir():
                raise DataError(f"{folder} is missing; WISDM {kind} data needs raw/{kind}/accel and raw/{kind}/gyro")
        acc_files = _subject_files(acc_dir, "accel", kind)
        gyro_files = _subject_files(gyro_dir, "gyro", kind)
        if not acc_files:
            raise DataError(f"{acc_dir} holds no data_<subject>_accel_{kind}.txt files")
        for subject in sorted(set(acc_files) | set(gyro_files), key=int):
            if subject not in acc_files or subject not in gyro_files:
                missing = gyro_dir if subject not in gyro_files else acc_dir
                skipped.append(f"wisdm subject {subject} {kind}: no file in {missing}; skipped")
                continue
            acc = _read_file(acc_files[subject], subject, codes)
            gyro = _read_file(gyro_files[subject], subject, codes)
            for label, code in enumerate(codes):
                a, g = acc.get(code), gyro.get(code)
                if a is None and g is None:
                    continue
                spans = [] if a is None or g is None else _fuse(a, g, sample_rate, max_gap_s)
                if not spans:
                    skipped.append(f"wisdm subject {subject} {kind} {key[code]}: accel and gyro never overlap; skipped")
                for i, signal in enumerate(spans, start=1):
                    recordings.append(
                        Recording(
                            signal=signal, labels=np.full(len(signal), label, dtype=np.int64),
                            sample_rate=sample_rate, subject=subject, session=f"{key[code]}-{i}", dataset=NAME,
                            device=DEVICE[kind], placement=BODY[kind], layout=IMU6, source=str(acc_files[subject]),
                        )  # fmt: skip
                    )
    if not recordings:
        raise DataError(f"{base}: no subject has overlapping accel and gyro samples")
    return RecordingSet(recordings, label_names, NAME, skipped=skipped)


def _read_key(path: Path) -> dict[str, str]:
    if not path.is_file():
        return dict(DEFAULT_KEY)
    key: dict[str, str] = {}
    for line, text in enumerate(read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        m = _KEY_LINE.match(text)
        if not m:
            raise DataError(f"{path} line {line}: expected `activity = LETTER`, got `{text}`")
        key[m[2]] = m[1]
    if not key:
        raise DataError(f"{path} names no activities")
    return key


def _subject_files(folder: Path, sensor: str, kind: str) -> dict[str, Path]:
    files = {}
    for path in folder.glob("data_*.txt"):
        m = _FILE.match(path.name)
        if not m or m[2] != sensor or m[3] != kind:
            raise DataError(f"{path}: expected a file named data_<subject>_{sensor}_{kind}.txt in this folder")
        files[m[1]] = path
    return files


def _read_file(path: Path, subject: str, codes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, Path]]:
    """Activity code → (time in ns, values [n, 3], file) of one subject's file."""
    lines = [text.rstrip().rstrip(";") for text in read_text(path).splitlines()]
    fields = {"subject": (0, "i"), "code": (1, "s"), "t": (2, "i"), "x": (3, "f"), "y": (4, "f"), "z": (5, "f")}
    rec = read_records(lines, str(path), fields, delimiter=",")
    if len(rec["t"]) == 0:
        raise DataError(f"{path} is empty")
    wrong = np.flatnonzero(rec["subject"] != int(subject))
    if len(wrong):
        line = line_of_row(lines, wrong[0])
        raise DataError(f"{path} line {line}: subject {rec['subject'][wrong[0]]} in a file of subject {subject}")
    unknown = np.flatnonzero(~np.isin(rec["code"], codes))
    if len(unknown):
        line = line_of_row(lines, unknown[0])
        raise DataError(
            f"{path} line {line}: activity code `{rec['code'][unknown[0]]}` is not in activity_key.txt ({codes})"
        )
    values = np.stack([rec["x"], rec["y"], rec["z"]], axis=1)
    return {
        str(code): (rec["t"][rec["code"] == code], values[rec["code"] == code], path) for code in np.unique(rec["code"])
    }


def _fuse(acc, gyro, rate: float, max_gap_s: float) -> list[np.ndarray]:
    t0 = min(acc[0].min(), gyro[0].min())
    t_acc, v_acc = clean_times((acc[0] - t0) / 1e9, acc[1])
    t_gyro, v_gyro = clean_times((gyro[0] - t0) / 1e9, gyro[1])
    for t, path in ((t_acc, acc[2]), (t_gyro, gyro[2])):
        step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
        if len(t) > 1 and not 1e-4 <= step <= 1.0:
            raise DataError(f"{path}: samples are {step:.3g} s apart (median); timestamps must be in nanoseconds")
    streams = [(t_acc, to_canonical(v_acc, "acc", "m/s^2")), (t_gyro, to_canonical(v_gyro, "gyro", "rad/s"))]
    return [signal for signal, _ in fuse_streams(streams, rate, max_gap_s)]
