"""Dataset loaders for the official published layouts. Each module has ``detect(root)`` and ``load(root, **opts)``."""

from __future__ import annotations

import importlib
from pathlib import Path

from fedhar.data.recording import RecordingSet
from fedhar.errors import DataError

#: loader name → module (imported lazily so one broken loader never blocks the others)
LOADERS = {
    "hapt": "fedhar.data.loaders.hapt",
    "uci_har": "fedhar.data.loaders.uci_har",
    "motionsense": "fedhar.data.loaders.motionsense",
    "hhar": "fedhar.data.loaders.hhar",
    "realworld": "fedhar.data.loaders.realworld",
    "wisdm": "fedhar.data.loaders.wisdm",
    "pamap2": "fedhar.data.loaders.pamap2",
    "generic": "fedhar.data.loaders.generic",  # last: detection accepts any CSV folder with channel columns
}


def _module(name: str):
    if name not in LOADERS:
        raise DataError(f"unknown dataset `{name}`; known: {sorted(LOADERS)} (or `auto` to detect from the folder)")
    return importlib.import_module(LOADERS[name])


def detect_layout(path: str | Path) -> str:
    """Name of the loader whose official layout ``path`` holds."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path {root} does not exist; download the dataset and point `data.path` at its folder")
    for name in LOADERS:
        if _module(name).detect(root):
            return name
    raise DataError(
        f"{root}: no known dataset layout found (looked for {sorted(LOADERS)}); "
        "check that the path is the unpacked archive's top folder, or set `data.dataset`"
    )


def load_recordings(path: str | Path, dataset: str = "auto", **options) -> RecordingSet:
    """Read a dataset folder into recordings in canonical units (acc in g, gyro in rad/s)."""
    name = detect_layout(path) if dataset == "auto" else dataset
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path {root} does not exist; download the dataset and point `data.path` at its folder")
    return _module(name).load(root, **options)
