"""RealWorld 2016 (Sztyler & Stuckenschmidt), ``proband<N>/data/{acc,gyr}_<activity>_csv.zip``.

Each zip holds one CSV per body position, ``acc_<activity>_<position>.csv`` (gyro files are
named ``Gyroscope_<activity>_<position>.csv``), columns ``id,attr_time,attr_x,attr_y,attr_z``:
time in ms, acc in m/s², gyro in rad/s, about 50 Hz. Positions: chest, forearm (an LG G Watch R),
head, shin, thigh, upperarm, waist (Samsung Galaxy S4 phones). Option ``placement`` picks the
position (default waist); it becomes the placement tag.

Variations of the published archive that are handled:

- an activity recorded in several parts: files ``acc_<activity>_2_<position>.csv`` etc., and
  for some probands (4, 7, 14 climbing) zips inside the zip (``acc_climbingdown_2_csv.zip``);
  all members are searched recursively and each part number becomes its own recording
  (session ``climbingdown-2``), a file without a number being part 1;
- single recordings published under a part number (``acc_walking_2_<position>.csv``, e.g.
  proband 4 walking, proband 6/7 sitting, 8 standing, 13 walking): when each sensor has exactly
  one part, those two are paired whatever their numbers;
- a position missing from a zip, or a zip missing (e.g. proband 2 climbingup forearm,
  proband 6 jumping thigh): that recording is skipped and listed in ``RecordingSet.skipped``.

Acc and gyro timestamps are not paired: both are put on one uniform grid at ``sample_rate``
(default 50 Hz) over the span where both have data, splitting at gaps over ``max_gap_s``.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from fedhar.data.loaders.common import not_text
from fedhar.data.loaders.generic import clean_times, fuse_streams, header_index, read_records, resolve_placement
from fedhar.data.preprocess import to_canonical
from fedhar.data.recording import IMU6, Recording, RecordingSet
from fedhar.errors import DataError

NAME = "realworld"
FOLDER = "realworld2016_dataset"
LABELS = ["climbingdown", "climbingup", "jumping", "lying", "standing", "sitting", "running", "walking"]
PLACEMENTS = ("chest", "forearm", "head", "shin", "thigh", "upperarm", "waist")
_PROBAND = re.compile(r"^proband(\d+)$")
_MEMBER = re.compile(r"^(?P<sensor>acc|Gyroscope)_(?P<act>[a-z]+?)(?:_(?P<part>\d+))?_(?P<pos>[a-z]+)\.csv$")
_COLUMNS = ["attr_time", "attr_x", "attr_y", "attr_z"]


def _probands(root: Path) -> list[Path]:
    for cand in (root / FOLDER, root):
        found = [p for p in cand.iterdir() if p.is_dir() and _PROBAND.match(p.name)] if cand.is_dir() else []
        if found:
            return sorted(found, key=lambda p: int(_PROBAND.match(p.name)[1]))
    return []


def detect(root: Path) -> bool:
    return root.is_dir() and any(any((p / "data").glob("acc_*_csv.zip")) for p in _probands(root))


def load(root: Path, placement: str | None = None, sample_rate: float = 50.0, max_gap_s: float = 0.5) -> RecordingSet:
    position = resolve_placement(placement, {p: p for p in PLACEMENTS}, "waist", "RealWorld")
    probands = _probands(root)
    if not probands:
        raise DataError(f"{root}: no proband<N>/ folders; point `data.path` at `{FOLDER}/`")
    recordings, skipped = [], []
    for folder in probands:
        data = folder / "data"
        if not data.is_dir():
            raise DataError(f"{data} is missing; every proband folder of the archive has a data/ folder of zips")
        subject = _PROBAND.match(folder.name)[1]
        for act in LABELS:
            acc_zip, gyr_zip = data / f"acc_{act}_csv.zip", data / f"gyr_{act}_csv.zip"
            if not acc_zip.is_file() or not gyr_zip.is_file():
                missing = [z.name for z in (acc_zip, gyr_zip) if not z.is_file()]
                skipped.append(f"realworld proband{subject} {act}: {missing} missing; skipped")
                continue
            acc_parts = _parts(acc_zip, "acc", act, position)
            gyr_parts = _parts(gyr_zip, "Gyroscope", act, position)
            for part, (acc, gyr) in _pair(acc_parts, gyr_parts).items():
                if acc is None or gyr is None:
                    where = acc_zip if acc is None else gyr_zip
                    skipped.append(f"{where}: no {position} file for part {part}; skipped")
                    continue
                recordings.extend(_fuse(acc, gyr, subject, act, part, position, sample_rate, max_gap_s))
    if not recordings:
        raise DataError(f"{root}: no {position} recordings with both acc and gyr files; check `data.placement`")
    return RecordingSet(recordings, list(LABELS), NAME, skipped=skipped)


def _parts(path: Path, sensor: str, act: str, position: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Part number → (time s, values [n, 3]) of the position's CSVs anywhere inside the zip (zips in zips too)."""
    try:
        with zipfile.ZipFile(path) as zf:
            found = _search(zf, str(path), sensor, act, position)
    except _ZIP_DAMAGE as e:
        raise DataError(f"{path} is not a readable zip ({type(e).__name__}: {e}); download it again") from None
    return found


#: what a damaged zip raises while it is read (a corrupt deflate stream is a zlib.error, not a BadZipFile)
_ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError)
#: deflate expands data at most ~1032 times; a member claiming more is damaged or a zip bomb
_MAX_DEFLATE_RATIO = 1100


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    """A member's bytes, after checking that its claimed size is one compression can give."""
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 4096:
        raise DataError(f"{where}:{info.filename} claims {info.file_size} bytes from {info.compress_size} "
                        "compressed ones: the zip is damaged; download it again")  # fmt: skip
    return zf.read(info)


def _search(zf: zipfile.ZipFile, where: str, sensor: str, act: str, position: str) -> dict:
    found = {}
    for info in zf.infolist():
        name = info.filename
        base = name.rsplit("/", 1)[-1]
        if base.startswith("._") or "__MACOSX" in name:  # macOS resource forks, not data
            continue
        if base.endswith(".zip"):
            try:
                with zipfile.ZipFile(io.BytesIO(_read(zf, info, where))) as inner:
                    found.update(_search(inner, f"{where}:{name}", sensor, act, position))
            except _ZIP_DAMAGE as e:
                raise DataError(f"{where}:{name} is not a readable zip ({type(e).__name__}: {e}); download the "
                                "archive again") from None  # fmt: skip
            continue
        m = _MEMBER.match(base)
        if m and m["sensor"] == sensor and m["act"] == act and m["pos"] == position:
            found[int(m["part"] or 1)] = _read_member(_read(zf, info, where), f"{where}:{name}")
    return found


def _read_member(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise not_text(where, e, raw) from None
    if not lines:
        raise DataError(f"{where} is empty")
    cols = header_index(lines[0].split(","), where, _COLUMNS)
    rec = read_records(
        lines[1:], where, {c: (cols[c], "f") for c in _COLUMNS}, delimiter=",", first_line=2
    )
    if len(rec["attr_time"]) < 2:
        raise DataError(f"{where}: fewer than two samples")
    return rec["attr_time"] / 1000.0, np.stack([rec["attr_x"], rec["attr_y"], rec["attr_z"]], axis=1)


def _pair(acc: dict, gyr: dict) -> dict[int, tuple]:
    if len(acc) == 1 and len(gyr) == 1:  # one part each, even when numbered differently
        return {min(*acc, *gyr): (next(iter(acc.values())), next(iter(gyr.values())))}
    return {p: (acc.get(p), gyr.get(p)) for p in sorted(set(acc) | set(gyr))}


def _fuse(acc, gyr, subject, act, part, position, rate, max_gap_s) -> list[Recording]:
    t0 = min(acc[0].min(), gyr[0].min())
    t_acc, v_acc = clean_times(acc[0] - t0, acc[1])
    t_gyr, v_gyr = clean_times(gyr[0] - t0, gyr[1])
    streams = [(t_acc, to_canonical(v_acc, "acc", "m/s^2")), (t_gyr, to_canonical(v_gyr, "gyro", "rad/s"))]
    spans = fuse_streams(streams, rate, max_gap_s)
    label = LABELS.index(act)
    return [
        Recording(
            signal=signal, labels=np.full(len(signal), label, dtype=np.int64), sample_rate=rate, subject=subject,
            session=f"{act}-{part}" if len(spans) == 1 else f"{act}-{part}.{i}", dataset=NAME,
            device="lg-g-watch-r" if position == "forearm" else "samsung-galaxy-s4", placement=position,
            layout=IMU6, source=f"proband{subject} {act} part {part} {position}",
        )  # fmt: skip
        for i, (signal, _) in enumerate(spans, start=1)
    ]
