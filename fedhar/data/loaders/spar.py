"""SPAR smartwatch subset (Burns et al. 2018, as shipped in ``seglearn``), converted to the generic CSV layout.

Apple Watch recordings of 7 shoulder physiotherapy exercises, worn on the wrist of the exercising arm,
each exercise done once with the left and once with the right arm::

    <root>/labels.txt                            the exercises in label order: PEN ABD FEL IR ER TRAP ROW
    <root>/left_wrist/<subject>/<EXERCISE>.csv   (and left_wrist/labels.txt, the same table)
    <root>/right_wrist/<subject>/<EXERCISE>.csv

Each CSV is one set of one exercise: ``timestamp`` (s), ``acc_x acc_y acc_z`` (g, gravity included),
``gyro_x gyro_y gyro_z`` (rad/s), ``label``; 50 Hz. Files are read by the generic CSV reader (same checks,
same errors), with the units stated (g, rad/s) rather than guessed.

Both sides load at once: one recording per file, tagged placement ``left_wrist`` / ``right_wrist``, device
``apple-watch``, subject = the subject folder's name, session ``<side>/<subject>/<EXERCISE>``. The same body
site on the other arm mirrors the motion: a real placement shift with the same people and exercises. Option
``placement`` (``data.placement``) keeps one side: ``left_wrist`` (also ``left``), ``right_wrist``
(``right``), or ``all`` (the default).
"""

from __future__ import annotations

import csv
from pathlib import Path

from fedhar.data.loaders import generic
from fedhar.data.loaders.common import walk_files
from fedhar.data.loaders.generic import resolve_placement
from fedhar.data.recording import RecordingSet
from fedhar.errors import DataError

NAME = "spar"
DEVICE = "apple-watch"
LABELS = ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]
PLACEMENTS = ("left_wrist", "right_wrist")
UNITS = {"acc": "g", "gyro": "rad/s"}
COLUMNS = ("timestamp", "acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z", "label")
_ALIASES = {"left_wrist": "left_wrist", "left": "left_wrist", "right_wrist": "right_wrist", "right": "right_wrist"}


def _header(path: Path) -> set[str]:
    """The first line's column names, lower-cased (decoded leniently: a damaged file fails when read)."""
    try:
        with path.open("rb") as f:
            first = f.readline(1 << 16).decode("utf-8-sig", errors="replace")
        return {h.strip().lower() for h in next(csv.reader([first]), [])}
    except (OSError, csv.Error):
        return set()


def _sides(root: Path) -> list[str]:
    """The placements whose folder holds subject folders of CSVs with the SPAR columns."""
    found = []
    for side in PLACEMENTS:
        folder = root / side
        if not folder.is_dir():
            continue
        subjects = sorted(p for p in folder.iterdir() if p.is_dir())
        csvs = (f for s in subjects for f in sorted(s.glob("*.csv")))
        if any(set(COLUMNS) <= _header(f) for _, f in zip(range(5), csvs)):
            found.append(side)
    return found


def detect(root: Path) -> bool:
    return root.is_dir() and bool(_sides(root))


def load(root: Path, placement: str | None = None, max_gap_s: float = 1.0) -> RecordingSet:
    """Both wrists' recordings (or the one ``placement`` names), in g and rad/s, labelled with ``labels.txt``."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; point `data.path` at the SPAR folder holding left_wrist/ and "
                        "right_wrist/")  # fmt: skip
    present = _sides(root)
    if not present:
        raise DataError(f"{root}: no left_wrist/<subject>/<EXERCISE>.csv or right_wrist/... files with columns "
                        f"{list(COLUMNS)}; point `data.path` at the SPAR folder holding left_wrist/ and "
                        "right_wrist/")  # fmt: skip
    choices = {alias: side for alias, side in _ALIASES.items() if side in present} | {"all": "all"}
    which = resolve_placement(placement, choices, "all", "SPAR")
    sides = present if which == "all" else [which]
    labels = _label_table(root, present)
    recordings, skipped = [], []
    for side in sides:
        folder = root / side
        for path in walk_files(folder, ".csv"):
            if len(path.relative_to(folder).parts) != 2:
                raise DataError(f"{path}: SPAR files sit in {side}/<subject>/<EXERCISE>.csv, one folder per subject; "
                                "move it into its subject's folder")  # fmt: skip
        rs = generic.load(folder, placement=side, device=DEVICE, units=UNITS, labels=labels, max_gap_s=max_gap_s)
        for rec in rs.recordings:
            rec.dataset = NAME
            rec.session = f"{side}/{rec.session}"
        recordings += rs.recordings
        skipped += rs.skipped
    layouts = {r.layout for r in recordings}
    if len(layouts) > 1:
        raise DataError(f"{root}: the sides' files have different channels {[list(x.channels) for x in layouts]}")
    return RecordingSet(recordings, labels, NAME, skipped=skipped)


def _label_table(root: Path, sides: list[str]) -> list[str]:
    """``labels.txt`` at the top (else in a side's folder, else the published order): one table for both sides."""
    for path in [root / "labels.txt", *(root / side / "labels.txt" for side in sides)]:
        if path.is_file():
            return generic._read_label_file(path)
    return list(LABELS)
