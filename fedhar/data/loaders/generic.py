"""Generic layouts: a folder of CSV files with named channel columns, or one ``.npz`` window set.

This module also holds the readers the dataset loaders share (checked text tables, timestamped
streams put on a uniform grid), so every loader fails the same way: file, line, problem, fix.

CSV rules (``read_signal_csv`` and folder loading):

- one header line; columns are matched case-insensitively, other columns are ignored;
- channels ``acc_x acc_y acc_z`` / ``gyro_x ...`` / ``mag_x ...`` (each group needs all three axes),
  optionally with a unit: ``acc_x[m/s^2]``, ``acc_x (m/s2)``, ``acc_x_ms2``, ``gyro_x_dps``,
  ``gyro_x[deg/s]``. Without a unit (and without the ``units`` option) acc is taken as g, gyro as
  rad/s, mag as µT; values that cannot be in that unit (median |acc| above 3 g, gyro beyond
  ±35 rad/s) fail with a request to state the unit rather than being silently misread; a unit of
  another group (``acc_x[deg/s]``) fails;
- time: ``timestamp``/``time``/``t`` (seconds), ``timestamp_ms``/``time_ms`` (milliseconds),
  ``timestamp_us``, ``timestamp_ns``/``time_ns``; without one, the ``sample_rate`` option is needed.
  A median step outside 0.1 ms .. 1 s fails (the values are in another unit than the column's
  name says, e.g. epoch milliseconds under ``timestamp``). Near-uniform timestamps (every step
  within 5 % of the median) are kept as they are; otherwise the samples are interpolated onto a
  uniform grid at ``sample_rate`` (default: the median rate) and grid points inside gaps longer
  than ``max_gap_s`` become NaN (windowing drops and reports them). Timestamps that go backwards
  fail with the line;
- ``label``: text labels, an empty cell is unlabelled. The label table is ``labels.txt`` beside
  the files (one name per line, its order is the label order; other labels fail) or else the
  sorted set of labels found;
- subject: the ``subject`` column if present (a file with several subjects is split), else the
  name of the file's subfolder (``root/<subject>/<file>.csv``), else the file's stem;
- empty or ``nan`` channel cells are NaN samples (windowing drops the windows that hold them).

An ``.npz`` path (a saved :class:`WindowSet`) loads as one recording per window, with the
window's label and tags: windowing it again with the same window length gives back exactly
those windows, so it flows through relabelling, sensor selection and splits like any dataset.
The set's dataset is the windows' dataset tag when they share one (so ``common_labels`` finds
its table), else the file's stem.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fedhar.data.loaders.common import not_text, read_text, text_errors, walk_files
from fedhar.data.preprocess import UNIT_FACTORS, to_canonical
from fedhar.data.recording import CANONICAL_UNITS, UNLABELLED, Recording, RecordingSet, SensorLayout
from fedhar.errors import DataError

NAME = "generic"

# ---- shared readers -----------------------------------------------------------------------------

#: numpy dtype of each field kind in :func:`read_records`
_KINDS = {"f": np.float64, "i": np.int64, "s": "U32"}


def read_records(
    source: Path | Sequence[str],
    where: str,
    fields: dict[str, tuple[int, str]],
    *,
    delimiter: str | None = None,
    skiprows: int = 0,
    first_line: int = 1,
) -> dict[str, np.ndarray]:
    """Read columns ``{name: (column index, kind)}`` (kind f=float, i=int, s=text) of a text table.

    ``source`` is a file or a list of lines (``first_line`` is the file line of its first entry).
    NaN/Inf are kept. A cell that does not parse fails with ``where``, the line and the fix.
    """
    dtype = np.dtype([(name, _KINDS[kind]) for name, (_, kind) in fields.items()])
    usecols = [col for col, _ in fields.values()]
    try:
        table = np.loadtxt(
            source, dtype=dtype, delimiter=delimiter, usecols=usecols, skiprows=skiprows,
            ndmin=1, comments=None, quotechar='"' if delimiter else None, encoding="utf-8",
        )  # fmt: skip
    except UnicodeDecodeError as e:
        raise not_text(source if isinstance(source, Path) else where, e) from None
    except ValueError as e:
        line, problem = _first_bad_line(source, fields, delimiter, skiprows, first_line)
        raise DataError(f"{where} line {line}: {problem or e}; fix or delete that line") from e
    return {name: table[name] for name in fields}


def _lines(source: Path | Sequence[str]) -> Iterable[str]:
    if isinstance(source, Path):
        with source.open(encoding="utf-8", errors="replace") as f:
            yield from f
    else:
        yield from source


def _first_bad_line(
    source: Path | Sequence[str], fields: dict[str, tuple[int, str]], delimiter: str | None, skiprows: int, first: int
) -> tuple[int | str, str]:
    """Line number and problem of the first row that does not parse (only run after a failure)."""
    width = None
    for i, text in enumerate(_lines(source)):
        if i < skiprows:
            continue
        if not text.strip():
            if delimiter is not None and text.strip("\r\n"):  # numpy skips empty lines, not blank ones
                return first + i, "a line of only spaces"
            continue
        parts = [p.strip().strip('"') for p in text.strip().split(delimiter)]
        if width is not None and len(parts) != width and max(c for c, _ in fields.values()) >= min(len(parts), width):
            return first + i, f"{len(parts)} columns where earlier lines have {width}"
        width = width or len(parts)
        for name, (col, kind) in fields.items():
            if col >= len(parts):
                return first + i, f"no column {col + 1} (`{name}`): the line has {len(parts)} columns"
            if kind == "s":
                continue
            try:
                float(parts[col]) if kind == "f" else int(parts[col])
            except ValueError:
                what = "a number" if kind == "f" else "an integer"
                return first + i, f"`{name}` value `{parts[col]}` is not {what}"
    return "?", ""


def line_of_row(source: Path | Sequence[str], row: int, skiprows: int = 0, first_line: int = 1) -> int:
    """File line of data row ``row`` of a table read by :func:`read_records` (blank lines are no rows)."""
    seen = -1
    for i, text in enumerate(_lines(source)):
        if i >= skiprows and text.strip():
            seen += 1
            if seen == row:
                return first_line + i
    raise IndexError(row)


def header_index(header: list[str], where: str, required: Sequence[str]) -> dict[str, int]:
    """Column positions of ``required`` names (exact match after stripping quotes and spaces)."""
    names = [h.strip().strip('"').strip() for h in header]
    missing = [r for r in required if r not in names]
    if missing:
        raise DataError(f"{where} line 1: columns {missing} missing (header has {names}); is this the official file?")
    return {r: names.index(r) for r in required}


def clean_times(t: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sort samples by time and drop repeated timestamps (keeping the first)."""
    order = np.argsort(t, kind="stable")
    t = t[order]
    keep = np.concatenate([[True], np.diff(t) > 0]) if len(t) else np.zeros(0, bool)
    return (t[keep], *(c[order][keep] for c in columns))


def stretches(t: np.ndarray, max_gap_s: float) -> list[tuple[float, float]]:
    """(start, end) times of the runs of sorted ``t`` without a gap longer than ``max_gap_s``."""
    if len(t) == 0:
        return []
    breaks = np.flatnonzero(np.diff(t) > max_gap_s)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(t) - 1]])
    return [(float(t[a]), float(t[b])) for a, b in zip(starts, ends)]


def common_stretches(times: list[np.ndarray], max_gap_s: float) -> list[tuple[float, float]]:
    """Time spans where every stream has samples without a gap longer than ``max_gap_s``."""
    common = stretches(times[0], max_gap_s)
    for t in times[1:]:
        other, out, i, j = stretches(t, max_gap_s), [], 0, 0
        while i < len(common) and j < len(other):
            a, b = max(common[i][0], other[j][0]), min(common[i][1], other[j][1])
            if a < b:
                out.append((a, b))
            if common[i][1] < other[j][1]:
                i += 1
            else:
                j += 1
        common = out
    return common


def fuse_streams(
    streams: list[tuple[np.ndarray, np.ndarray]],
    rate: float,
    max_gap_s: float,
    labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Put several sensors' irregular samples on one shared uniform grid at ``rate`` Hz.

    ``streams`` are (time in s, values [n, c]) per sensor, already passed through
    :func:`clean_times`; ``labels`` (time, label per sample) give each grid point the label of the
    nearest labelled sample. Returns (signal [T, sum c], labels [T] or None) for every span where
    all sensors have data without a gap longer than ``max_gap_s``; gaps split recordings rather
    than being bridged.
    """
    out = []
    for a, b in common_stretches([t for t, _ in streams], max_gap_s):
        n = int(np.floor((b - a) * rate + 1e-9)) + 1
        if n < 2:
            continue
        grid = a + np.arange(n) / rate
        signal = np.concatenate(
            [np.stack([np.interp(grid, t, v[:, c]) for c in range(v.shape[1])], axis=1) for t, v in streams], axis=1
        )
        out.append((signal, None if labels is None else nearest(labels[0], labels[1], grid)))
    return out


def nearest(t: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``values`` of the sample (sorted times ``t``) nearest to each grid time."""
    right = np.clip(np.searchsorted(t, grid), 1, len(t) - 1)
    left = right - 1
    pick = np.where(grid - t[left] <= t[right] - grid, left, right)
    return values[pick]


def resolve_placement(placement: str | None, choices: dict[str, str], default: str, dataset: str) -> str:
    """Map a ``placement`` option (alias or tag) onto one of the loader's placements."""
    if placement is None:
        return default
    key = placement.strip().lower()
    if key not in choices:
        raise DataError(
            f"{dataset} has no placement `{placement}`; set `data.placement` to one of {sorted(set(choices))}"
        )
    return choices[key]


# ---- generic CSV --------------------------------------------------------------------------------

_UNIT_ALIASES = {
    "g": "g", "m/s^2": "m/s^2", "m/s2": "m/s^2", "m/s²": "m/s^2", "ms2": "m/s^2", "mps2": "m/s^2",
    "rad/s": "rad/s", "rads": "rad/s", "deg/s": "deg/s", "dps": "deg/s", "degs": "deg/s", "°/s": "deg/s",
    "ut": "uT", "µt": "uT", "microtesla": "uT",
}  # fmt: skip
_CHANNEL = re.compile(
    r"^(?P<group>acc|gyro|mag)_(?P<axis>[xyz])"
    r"(?:\s*[\[(]\s*(?P<unit>[^\])]+?)\s*[\])]|_(?P<suffix>g|ms2|mps2|rads|dps|degs|ut))?$",
    re.IGNORECASE,
)
_TIME_COLUMNS = {
    "timestamp": 1.0, "time": 1.0, "t": 1.0, "timestamp_s": 1.0, "time_s": 1.0,
    "timestamp_ms": 1e-3, "time_ms": 1e-3, "timestamp_us": 1e-6, "time_us": 1e-6,
    "timestamp_ns": 1e-9, "time_ns": 1e-9,
}  # fmt: skip
_TIME_UNIT = {1.0: "seconds", 1e-3: "milliseconds", 1e-6: "microseconds", 1e-9: "nanoseconds"}
_MIN_STEP_S, _MAX_STEP_S = 1e-4, 1.0  # 10 kHz .. 1 Hz: any body-worn IMU stream
_GROUP_ORDER = ("acc", "gyro", "mag")
#: a uniform grid may hold at most this many points per sample read (long gaps become NaN points)
_MAX_GRID_RATIO = 50


def _parse_units(units: str | dict[str, str] | None) -> dict[str, str]:
    """``{"acc": "m/s^2"}`` or ``"acc=m/s^2,gyro=deg/s"`` → canonical unit names per group."""
    if units is None:
        return {}
    if isinstance(units, str):
        pairs = [p.split("=", 1) for p in units.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise DataError(f"units `{units}` must look like `acc=m/s^2,gyro=deg/s`")
        units = {g.strip(): u.strip() for g, u in pairs}
    out = {}
    for group, unit in units.items():
        if group not in _GROUP_ORDER or unit.lower() not in _UNIT_ALIASES:
            raise DataError(
                f"units: `{group}={unit}` is not a known sensor group and unit (e.g. acc=m/s^2, gyro=deg/s)"
            )
        out[group] = _UNIT_ALIASES[unit.lower()]
        if (group, out[group]) not in UNIT_FACTORS:
            raise DataError(f"units: `{group}={unit}` is not a unit of {group}; use {_group_units(group)}")
    return out


def _group_units(group: str) -> str:
    """The unit spellings a sensor group accepts, for error messages."""
    return " or ".join(sorted({u for g, u in UNIT_FACTORS if g == group and u in _UNIT_ALIASES.values()}))


def read_signal_csv(
    path: str | Path,
    units: str | dict[str, str] | None = None,
    sample_rate: float | None = None,
    max_gap_s: float = 1.0,
) -> tuple[np.ndarray, SensorLayout, float, np.ndarray | None]:
    """Read one CSV of raw samples: (signal float32 [T, C] in canonical units, layout, rate, labels).

    ``labels`` is a text array per sample ("" = unlabelled), or None when there is no ``label``
    column. Rules in the module docstring; this is also what ``fedhar predict`` reads.
    """
    table = _read_csv(Path(path), units, sample_rate, max_gap_s)
    return table["signal"], table["layout"], table["rate"], table["labels"]


def _read_csv(
    path: Path, units_opt, sample_rate: float | None, max_gap_s: float, label_table: tuple[list[str], str] | None = None
) -> dict:
    """One CSV → canonical signal; ``label_table`` (names, where they come from) rejects other labels."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; point the command at a CSV file of raw samples")
    try:
        with text_errors(path), path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except csv.Error as e:  # e.g. a field over the csv module's size limit: not a table of samples
        raise DataError(f"{path}: not a readable CSV table ({e}); replace it with the original file") from None
    if not rows:
        raise DataError(f"{path} is empty; it needs a header line and samples")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    channels: dict[str, dict[str, tuple[int, str | None]]] = {}
    for col, name in enumerate(header):
        m = _CHANNEL.match(name)
        if m:
            unit = m["unit"] or m["suffix"]
            if unit is not None and unit.lower() not in _UNIT_ALIASES:
                raise DataError(
                    f"{path} line 1: column `{name}` has unknown unit `{unit}`; use g, m/s^2, rad/s, deg/s or uT"
                )
            group, canonical = m["group"].lower(), unit and _UNIT_ALIASES[unit.lower()]
            if canonical is not None and (group, canonical) not in UNIT_FACTORS:
                raise DataError(
                    f"{path} line 1: column {name} has unit {unit}, which is not a unit of {group}; "
                    f"use {_group_units(group)}"
                )
            channels.setdefault(group, {})[m["axis"].lower()] = (col, canonical)
    if not channels:
        raise DataError(
            f"{path} line 1: no channel columns (expected acc_x, acc_y, acc_z, gyro_x, ... ; header is {header})"
        )
    for group, axes in channels.items():
        if sorted(axes) != ["x", "y", "z"]:
            raise DataError(f"{path} line 1: sensor `{group}` needs columns for x, y and z, found {sorted(axes)}")
    option_units = _parse_units(units_opt)
    body, line_of = [], []  # rows with samples, and their line numbers in the file
    for i, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {i}: {len(row)} cells but the header has {len(header)}")
        body.append(row)
        line_of.append(i)
    if not body:
        raise DataError(f"{path} has a header but no samples")

    def numeric(col: int, what: str) -> np.ndarray:
        cells = [r[col].strip() or "nan" for r in body]
        try:
            return np.asarray(cells, dtype=np.float64)
        except ValueError:
            for i, c in enumerate(cells):
                try:
                    float(c)
                except ValueError:
                    raise DataError(
                        f"{path} line {line_of[i]}: {what} `{c}` is not a number; fix or delete that line"
                    ) from None
            raise

    groups, parts = {}, []
    for group in [g for g in _GROUP_ORDER if g in channels]:
        col_units = {u for _, u in channels[group].values() if u is not None}
        if len(col_units) > 1:
            raise DataError(f"{path} line 1: `{group}` columns have different units {sorted(col_units)}")
        if col_units and group in option_units and option_units[group] not in col_units:
            raise DataError(
                f"{path}: column units {sorted(col_units)} contradict the units option `{option_units[group]}`"
            )
        stated = next(iter(col_units), None) or option_units.get(group)
        values = np.stack([numeric(channels[group][a][0], f"{group}_{a}") for a in "xyz"], axis=1)
        canonical = to_canonical(values, group, stated or CANONICAL_UNITS[group])
        _check_plausible(path, group, canonical, stated)
        parts.append(canonical)
        groups[group] = [f"{group}_{a}" for a in "xyz"]
    layout = SensorLayout.from_groups(groups)
    signal = np.concatenate(parts, axis=1)
    labels = np.asarray([r[lower.index("label")].strip() for r in body]) if "label" in lower else None
    if labels is not None and label_table is not None:
        names, origin = label_table
        outside = np.flatnonzero(~np.isin(labels, [*names, ""]))
        if len(outside):
            raise DataError(
                f"{path} line {line_of[outside[0]]}: label `{labels[outside[0]]}` is not in the label table "
                f"{names}; fix the label or add it to {origin}"
            )
    subjects = np.asarray([r[lower.index("subject")].strip() for r in body]) if "subject" in lower else None

    time_cols = [(c, _TIME_COLUMNS[name]) for c, name in enumerate(lower) if name in _TIME_COLUMNS]
    if len(time_cols) > 1:
        raise DataError(f"{path} line 1: several time columns {[header[c] for c, _ in time_cols]}; keep one")
    if time_cols:
        col, scale = time_cols[0]
        t = numeric(col, header[col])
        bad = np.flatnonzero(~np.isfinite(t))
        if len(bad):
            raise DataError(f"{path} line {line_of[bad[0]]}: time `{body[bad[0]][col]}` is missing or not finite")
        back = np.flatnonzero(np.diff(t) < 0)
        if len(back):
            raise DataError(
                f"{path} line {line_of[back[0] + 1]}: time goes backwards; sort the file by `{header[col]}`"
            )
        t = (t - t[0]) * scale
        signal, labels, subjects, rate = _to_uniform(
            path, header[col], t, signal, labels, subjects, sample_rate, max_gap_s
        )
    elif sample_rate is None:
        raise DataError(
            f"{path} line 1: no time column (timestamp [s], timestamp_ms or timestamp_ns); add one or give the "
            "rate it was recorded at (data.loader_options.sample_rate; fedhar predict/evaluate --sample-rate)"
        )
    else:
        rate = float(sample_rate)
    return {"signal": signal.astype(np.float32), "layout": layout, "rate": rate, "labels": labels, "subjects": subjects}


def _check_plausible(path: Path, group: str, values: np.ndarray, stated: str | None) -> None:
    """Fail on values (in canonical units) that no body-worn sensor gives, instead of reading them 9.8× or 57×
    off: a missing unit, or a wrong one in the header or the units option."""
    finite = values[np.isfinite(values).all(axis=1)]
    if not len(finite) or group not in ("acc", "gyro"):
        return
    magnitude, peak = float(np.median(np.linalg.norm(finite, axis=1))), float(np.abs(finite).max())
    if group == "acc" and magnitude > 3.0:
        problem = f"a median magnitude of {magnitude:.2f} g"
    elif group == "gyro" and peak > 35.0:
        problem = f"values up to {peak:.1f} rad/s, beyond any gyroscope"
    else:
        return
    if stated is None:
        raise DataError(f"{path}: {group} columns have no unit and, read as {CANONICAL_UNITS[group]}, {problem}; "
                        f"name them {group}_x[{'m/s^2' if group == 'acc' else 'deg/s'}] etc., or state the unit "
                        "(data.loader_options.units; fedhar predict/evaluate --units)")  # fmt: skip
    raise DataError(f"{path}: {group} read in {stated} (the column header or the units option) gives {problem}; "
                    "check that unit")  # fmt: skip


def _to_uniform(path, time_column, t, signal, labels, subjects, sample_rate, max_gap_s):
    """Keep near-uniform samples as they are; otherwise interpolate onto a uniform grid (gaps → NaN).

    A median step outside 0.1 ms .. 1 s is a time column in another unit than its name says (epoch
    milliseconds read as seconds would otherwise grid a 50 Hz stream at 0.05 Hz, or blow it up 1000×).
    """
    if len(t) < 2:
        raise DataError(f"{path}: a single sample; a recording needs at least two")
    steps = np.diff(t)
    positive = steps[steps > 0]
    if not len(positive):
        raise DataError(f"{path}: all timestamps are equal; check the time column's unit")
    median = float(np.median(positive))
    if not _MIN_STEP_S <= median <= _MAX_STEP_S:
        raise DataError(
            f"{path}: samples are {median:.3g} s apart (median) with `{time_column}` read as "
            f"{_TIME_UNIT[_TIME_COLUMNS[time_column.lower()]]}; name the column for its unit: "
            "timestamp (s), timestamp_ms, timestamp_us or timestamp_ns"
        )
    native = float(np.round(1.0 / median, 2))
    rate = float(sample_rate) if sample_rate else native
    if np.all(np.abs(steps - median) <= 0.05 * median) and abs(rate - native) <= 0.01 * native:
        return signal, labels, subjects, native
    points = int(np.floor(t[-1] * rate + 1e-9)) + 1
    if points > max(_MAX_GRID_RATIO * len(t), 1_000_000):  # one wild timestamp must not allocate a huge grid
        jump = int(np.argmax(steps))
        raise DataError(
            f"{path}: timestamps span {t[-1]:.6g} s for {len(t)} samples (a jump of {steps[jump]:.6g} s before the "
            f"sample on data row {jump + 2}): a {rate:g} Hz grid over it would take {points} points; fix that "
            "timestamp, or split the file at the gap"
        )
    t, signal, *rest = clean_times(t, signal, *(a for a in (labels, subjects) if a is not None))
    grid = np.arange(points) / rate
    out = np.stack([np.interp(grid, t, signal[:, c]) for c in range(signal.shape[1])], axis=1)
    prev = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 2)
    out[(t[prev + 1] - t[prev] > max_gap_s) & (grid > t[prev])] = np.nan  # inside a long gap: no data
    rest = [nearest(t, a, grid) for a in rest]
    labels = rest.pop(0) if labels is not None else None
    subjects = rest.pop(0) if subjects is not None else None
    return out, labels, subjects, rate


def _csv_files(root: Path) -> list[Path]:
    return walk_files(root, ".csv")


def _has_channel_header(path: Path) -> bool:
    """Whether the first line names channel columns. Only that line is decoded (leniently), so a file damaged
    further on is still recognised, and then fails by name when it is read, rather than being left out."""
    try:
        with path.open("rb") as f:
            first = f.readline(1 << 16).decode("utf-8-sig", errors="replace")
        header = next(csv.reader([first]), [])
    except (OSError, csv.Error):
        return False
    return any(_CHANNEL.match(h.strip()) for h in header)


def detect(root: Path) -> bool:
    if root.is_file():
        return root.suffix == ".npz"
    return root.is_dir() and any(_has_channel_header(p) for p in _csv_files(root)[:20])


def load(
    root: Path,
    placement: str | None = None,
    device: str = "unknown",
    units: str | dict[str, str] | None = None,
    sample_rate: float | None = None,
    labels: list[str] | None = None,
    max_gap_s: float = 1.0,
    sensors: list[str] | None = None,
) -> RecordingSet:
    """A folder of CSV files, or an ``.npz`` window set; ``placement``/``device`` become the tags.

    ``sensors`` (``data.sensors``) keeps those groups of every file before the files' channels are
    compared, so a file with an extra sensor (a magnetometer) joins the others."""
    if root.is_file():
        if root.suffix != ".npz":
            raise DataError(f"{root}: the generic loader reads a folder of CSV files or one .npz window set")
        return _load_npz(root)
    files = [p for p in _csv_files(root) if _has_channel_header(p)]
    if not files:
        raise DataError(f"{root}: no CSV file with a header naming acc_x/gyro_x... channel columns")
    table_path = root / "labels.txt"
    label_names = list(labels) if labels else _read_label_file(table_path) if table_path.is_file() else None
    origin = "the labels option" if labels else str(table_path)
    table = (label_names, origin) if label_names is not None else None
    tables = [(p, _read_csv(p, units, sample_rate, max_gap_s, table)) for p in files]
    if sensors:
        for p, t in tables:
            try:
                t["layout"], keep = t["layout"].select(list(sensors))
            except DataError as e:
                raise DataError(f"{p}: {e}") from None
            t["signal"] = np.ascontiguousarray(t["signal"][:, keep])
    layouts = {t["layout"] for _, t in tables}
    if len(layouts) > 1:
        raise DataError(f"{root}: files have different channels {[list(lay.channels) for lay in layouts]}; use one set")
    if label_names is None:
        label_names = sorted({str(x) for _, t in tables if t["labels"] is not None for x in t["labels"]} - {""})
    index = {name: i for i, name in enumerate(label_names)}
    recordings = []
    for p, t in tables:
        n = len(t["signal"])
        lab = (
            np.asarray([index.get(str(x), UNLABELLED) for x in t["labels"]], dtype=np.int64)
            if t["labels"] is not None
            else np.full(n, UNLABELLED, dtype=np.int64)
        )
        rel = p.relative_to(root)
        default_subject = rel.parts[0] if len(rel.parts) > 1 else p.stem
        session = str(rel.with_suffix(""))
        runs = _runs(t["subjects"]) if t["subjects"] is not None else [(0, n)]
        for k, (a, b) in enumerate(runs):
            subject = str(t["subjects"][a]) if t["subjects"] is not None and t["subjects"][a] else default_subject
            recordings.append(
                Recording(
                    signal=t["signal"][a:b], labels=lab[a:b], sample_rate=t["rate"], subject=subject,
                    session=session if len(runs) == 1 else f"{session}#{k}", dataset=NAME, device=device,
                    placement=placement or "unknown", layout=t["layout"], source=str(p),
                )  # fmt: skip
            )
    return RecordingSet(recordings, label_names, NAME)


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of equal consecutive values."""
    cuts = np.flatnonzero(values[1:] != values[:-1]) + 1
    bounds = np.concatenate([[0], cuts, [len(values)]])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def _read_label_file(path: Path) -> list[str]:
    names: list[str] = []
    for i, text in enumerate(read_text(path).splitlines(), start=1):
        name = text.strip()
        if not name:
            continue
        if name in names:
            raise DataError(f"{path} line {i}: label `{name}` is listed twice")
        names.append(name)
    if not names:
        raise DataError(f"{path} is empty; list one label name per line")
    return names


def _load_npz(path: Path) -> RecordingSet:
    from fedhar.data.windows import WindowSet  # windows imports recordings; keep the loader import-light

    ws = WindowSet.load(path)
    if not ws.sample_rate > 0:
        raise DataError(f"{path} has no `sample_rate` array; add it (Hz) so windows can be resampled and timed")
    if len(ws) == 0:
        raise DataError(f"{path} holds no windows")
    recordings = [
        Recording(
            signal=ws.x[i].T, labels=np.full(ws.window_len, ws.y[i], dtype=np.int64), sample_rate=ws.sample_rate,
            subject=str(ws.subject[i]), session=str(ws.session[i]), dataset=str(ws.dataset[i]),
            device=str(ws.device[i]), placement=str(ws.placement[i]), layout=ws.layout, source=f"{path}[{i}]",
        )  # fmt: skip
        for i in range(len(ws))
    ]
    tags = set(ws.dataset.tolist())  # the windows' own dataset (for common_labels), else the file's name
    return RecordingSet(recordings, list(ws.label_names), tags.pop() if len(tags) == 1 else path.stem)
