"""Small readers shared by the dataset loaders; each error names the file and line."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fedhar.errors import DataError


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; point `data.path` at {what}")
    return path


def walk_files(root: Path, suffix: str = "") -> list[Path]:
    """Files under ``root`` (ending in ``suffix``), sorted, descending into symlinked folders too.

    ``Path.rglob`` skips symlinked folders before Python 3.13, yet datasets are often linked in
    from shared storage; a folder reached twice (a link cycle) is walked once.
    """
    seen: set[str] = set()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        found += [Path(folder, f) for f in files if f.endswith(suffix) and os.path.isfile(os.path.join(folder, f))]
    return sorted(found)


def not_text(path: Path | str, error: UnicodeDecodeError, raw: bytes | None = None) -> DataError:
    """The error for a text file holding bytes that are not UTF-8 (a binary, truncated or corrupt file):
    it names the file and the first line that does not decode (``raw``: the bytes, for a zip member)."""
    line = first_undecodable_line(raw if raw is not None else Path(path))
    where = f" line {line}" if line else ""
    bad = error.object[error.start : error.start + 4] if isinstance(error.object, bytes) else b""
    return DataError(f"{path}{where}: bytes {bad!r} are not UTF-8 text; the file is binary or corrupt, not the "
                     "dataset's text table: replace it with the original (unpack or download it again)")  # fmt: skip


def first_undecodable_line(source: Path | bytes) -> int:
    """1-based number of the first line that is not UTF-8 (0: none found); run only after a decode error."""
    try:
        lines = source.open("rb") if isinstance(source, Path) else iter(source.splitlines(keepends=True))
    except OSError:
        return 0
    try:
        for i, raw in enumerate(lines, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return i
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()
    return 0


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents; other bytes fail with the file and line (:func:`not_text`)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise not_text(path, e) from None


@contextmanager
def text_errors(path: Path) -> Iterator[None]:
    """Turns a UnicodeDecodeError raised while reading ``path`` as text into a one-line DataError."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise not_text(path, e) from None


def read_numeric_table(path: Path, columns: int, delimiter: str | None = None) -> np.ndarray:
    """Read a whitespace- or ``delimiter``-separated numeric table with exactly ``columns`` columns.

    NaN/Inf values are kept (windowing drops and reports them); text that is not a number fails
    with the file and line.
    """
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        with warnings.catch_warnings():  # an empty file: reported below, as an error
            warnings.filterwarnings("ignore", "loadtxt: input contained no data", UserWarning)
            data = np.loadtxt(path, dtype=np.float64, delimiter=delimiter, ndmin=2, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise not_text(path, e) from None
    except ValueError as e:
        line = _first_bad_line(path, columns, delimiter)
        raise DataError(f"{path} line {line}: not {columns} numeric columns ({e})") from e
    if data.size == 0:
        raise DataError(f"{path} is empty")
    if data.shape[1] != columns:
        raise DataError(f"{path}: expected {columns} columns, found {data.shape[1]}")
    return data


def _first_bad_line(path: Path, columns: int, delimiter: str | None) -> int:
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, text in enumerate(f, start=1):
            parts = text.strip().split(delimiter)
            if not text.strip():
                continue
            if len(parts) != columns:
                return i
            try:
                [float(p) for p in parts]
            except ValueError:
                return i
    return 0


def read_activity_labels(path: Path, default: list[str]) -> list[str]:
    """``activity_labels.txt`` of the UCI archives (``id NAME`` per line, ids 1..N); ``default`` if absent."""
    if not path.is_file():
        return list(default)
    names: dict[int, str] = {}
    for line, text in enumerate(read_text(path).splitlines(), start=1):
        parts = text.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdecimal():
            raise DataError(f"{path} line {line}: expected `id NAME`, got `{text}`")
        names[int(parts[0])] = parts[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DataError(f"{path}: activity ids must be 1..N without gaps, got {sorted(names)}")
    return [names[i] for i in range(1, len(names) + 1)]
