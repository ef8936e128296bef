"""HHAR, Heterogeneity Activity Recognition (Stisen et al. 2015), ``Activity recognition exp/``.

Files ``Phones_accelerometer.csv``, ``Phones_gyroscope.csv``, ``Watch_accelerometer.csv``,
``Watch_gyroscope.csv``; columns ``Index,Arrival_Time,Creation_Time,x,y,z,User,Model,Device,gt``
(acc in m/s², gyro in rad/s, ``Creation_Time`` in ns, ``gt`` one of stand, sit, walk, stairsup,
stairsdown, bike, or null = unlabelled). Nine users (a..i) each carried 8 phones in a pouch on
the waist and wore 4 watches, 2 per arm.

Each device samples at its own, jittery rate (about 50-200 Hz), and acc and gyro samples are not
paired. Per (user, device): both sensors' ``Creation_Time`` (same clock on one device) are
sorted and de-duplicated, the spans where both have samples without a gap over ``max_gap_s``
become one recording each, and both are linearly interpolated onto one uniform grid at
``sample_rate`` (default 50 Hz, the slowest devices' native rate). A grid point takes the ``gt``
of the nearest accelerometer sample.

Tags: subject = User; device = Model (nexus4, s3, s3mini, samsungold, gear, lgwatch: the domain
that differs in hardware, so leave-one-device-out never tests on a model seen in training);
the physical unit (``Device``, e.g. nexus4_1) goes into the session (``nexus4_1-002``: its
second gap-free span). Placement is the body location, in the vocabulary the other loaders use:
``waist`` for phones, ``wrist`` for watches. Option ``placement``: phone (default; also
``waist``/``phone-waist``), watch (``wrist``/``watch-wrist``) or ``all``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from fedhar.data.loaders.common import text_errors
from fedhar.data.loaders.generic import clean_times, fuse_streams, header_index, read_records, resolve_placement
from fedhar.data.preprocess import to_canonical
from fedhar.data.recording import IMU6, UNLABELLED, Recording, RecordingSet
from fedhar.errors import DataError

NAME = "hhar"
FOLDER = "Activity recognition exp"
LABELS = ["stand", "sit", "walk", "stairsup", "stairsdown", "bike"]
FILES = {
    "phone": ("Phones_accelerometer.csv", "Phones_gyroscope.csv"),
    "watch": ("Watch_accelerometer.csv", "Watch_gyroscope.csv"),
}
BODY = {"phone": "waist", "watch": "wrist"}
PLACEMENTS = ("phone", "watch", "all")
_ALIASES = {
    "phone": "phone", "phones": "phone", "waist": "phone", "phone-waist": "phone",
    "watch": "watch", "watches": "watch", "wrist": "watch", "watch-wrist": "watch", "all": "all",
}  # fmt: skip
_COLUMNS = ["Creation_Time", "x", "y", "z", "User", "Model", "Device", "gt"]
_CHUNK_ROWS = 100_000  # ~55 MB of parsed text fields at a time


def _data_dir(root: Path) -> Path | None:
    for cand in (root / FOLDER, root):
        if any((cand / f).is_file() for pair in FILES.values() for f in pair):
            return cand
    return None


def detect(root: Path) -> bool:
    return root.is_dir() and _data_dir(root) is not None


def load(root: Path, placement: str | None = None, sample_rate: float = 50.0, max_gap_s: float = 0.5) -> RecordingSet:
    which = resolve_placement(placement, _ALIASES, "phone", "HHAR")
    kinds = ["phone", "watch"] if which == "all" else [which]
    base = _data_dir(root)
    if base is None:
        raise DataError(f"{root}: no HHAR files ({FILES['phone'][0]} ...); point `data.path` at `{FOLDER}/`")
    recordings, skipped = [], []
    for kind in kinds:
        acc_path, gyro_path = (base / name for name in FILES[kind])
        for path in (acc_path, gyro_path):
            if not path.is_file():
                raise DataError(f"{path} is missing; HHAR {kind}s need both {FILES[kind][0]} and {FILES[kind][1]}")
        acc, models = _read_sensor(acc_path)
        gyro, _ = _read_sensor(gyro_path)
        for key in sorted(set(acc) | set(gyro)):
            user, device = key
            if key not in acc or key not in gyro:
                missing = gyro_path.name if key not in gyro else acc_path.name
                skipped.append(f"hhar user {user} device {device}: no samples in {missing}; skipped")
                continue
            recordings.extend(
                _fuse(acc[key], gyro[key], user, device, models[key], kind, sample_rate, max_gap_s, acc_path)
            )
    if not recordings:
        raise DataError(f"{base}: no (user, device) has both accelerometer and gyroscope samples")
    return RecordingSet(recordings, list(LABELS), NAME, skipped=skipped)


def _read_sensor(path: Path) -> tuple[dict[tuple[str, str], dict[str, np.ndarray]], dict[tuple[str, str], str]]:
    """Samples of one HHAR file grouped by (user, device), read in chunks to bound memory."""
    parts: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    models: dict[tuple[str, str], str] = {}
    lookup = {name: i for i, name in enumerate(LABELS)} | {"null": UNLABELLED}
    with text_errors(path), path.open(encoding="utf-8") as f:
        cols = header_index(f.readline().rstrip("\n").split(","), str(path), _COLUMNS)
        fields = {
            "t": (cols["Creation_Time"], "i"), "x": (cols["x"], "f"), "y": (cols["y"], "f"), "z": (cols["z"], "f"),
            "user": (cols["User"], "s"), "model": (cols["Model"], "s"), "device": (cols["Device"], "s"),
            "gt": (cols["gt"], "s"),
        }  # fmt: skip
        line = 2
        while chunk := list(itertools.islice(f, _CHUNK_ROWS)):
            rec = read_records(chunk, str(path), fields, delimiter=",", first_line=line)
            gts, gt_index = _factorize(rec["gt"])
            unknown = [g for g in gts if g not in lookup]
            if unknown:
                bad = int(np.flatnonzero(rec["gt"] == unknown[0])[0])
                raise DataError(
                    f"{path} line {line + bad}: gt `{unknown[0]}` is not an HHAR label ({LABELS} or null); "
                    "fix that line"
                )
            labels = np.asarray([lookup[g] for g in gts], dtype=np.int8)[gt_index]
            values = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)
            users, user_index = _factorize(rec["user"])
            devices, device_index = _factorize(rec["device"])
            pair = user_index * len(devices) + device_index
            for code in np.unique(pair):
                rows = pair == code
                key = (str(users[code // len(devices)]), str(devices[code % len(devices)]))
                parts.setdefault(key, []).append((rec["t"][rows], values[rows], labels[rows]))
                models.setdefault(key, str(rec["model"][rows][0]))
            line += len(chunk)
    if not parts:
        raise DataError(f"{path} has a header but no samples")
    grouped = {}
    for key in list(parts):  # pop as we go: only one key's chunks are held twice at a time
        ps = parts.pop(key)
        grouped[key] = {"t": np.concatenate([p[0] for p in ps]), "v": np.concatenate([p[1] for p in ps]),
                        "gt": np.concatenate([p[2] for p in ps])}  # fmt: skip
    return grouped, models


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)``, fast for the long runs of one value HHAR files have."""
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    uniques, run_codes = np.unique(values[starts], return_inverse=True)
    return uniques, np.repeat(run_codes, np.diff(np.append(starts, len(values))))


def _fuse(acc, gyro, user, device, model, kind, rate, max_gap_s, acc_path) -> list[Recording]:
    t0 = min(acc["t"].min(), gyro["t"].min())
    t_acc, v_acc, gt = clean_times((acc["t"] - t0) / 1e9, acc["v"], acc["gt"])
    t_gyro, v_gyro = clean_times((gyro["t"] - t0) / 1e9, gyro["v"])
    for t, what in ((t_acc, "accelerometer"), (t_gyro, "gyroscope")):
        step = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
        if len(t) > 1 and not 1e-4 <= step <= 1.0:
            raise DataError(
                f"{acc_path.parent}: user {user} device {device} {what} samples are {step:.3g} s apart "
                "(median); Creation_Time must be in nanoseconds"
            )
    streams = [
        (t_acc, to_canonical(v_acc.astype(np.float64), "acc", "m/s^2")),
        (t_gyro, to_canonical(v_gyro.astype(np.float64), "gyro", "rad/s")),
    ]
    spans = fuse_streams(streams, rate, max_gap_s, labels=(t_acc, gt.astype(np.int64)))
    return [
        Recording(
            signal=signal, labels=labels, sample_rate=rate, subject=user, session=f"{device}-{i:03d}", dataset=NAME,
            device=model, placement=BODY[kind], layout=IMU6, source=f"{acc_path.parent} user {user} device {device}",
        )  # fmt: skip
        for i, (signal, labels) in enumerate(spans, start=1)
    ]
