"""Dataset loaders for the official published layouts. Each module has ``detect(root)`` and ``load(root, **opts)``."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from fedhar.data.recording import RecordingSet
from fedhar.errors import ConfigError, DataError

#: loader name → module (imported lazily so one broken loader never blocks the others)
LOADERS = {
    "hapt": "fedhar.data.loaders.hapt",
    "uci_har": "fedhar.data.loaders.uci_har",
    "motionsense": "fedhar.data.loaders.motionsense",
    "hhar": "fedhar.data.loaders.hhar",
    "realworld": "fedhar.data.loaders.realworld",
    "wisdm": "fedhar.data.loaders.wisdm",
    "pamap2": "fedhar.data.loaders.pamap2",
    "spar": "fedhar.data.loaders.spar",
    "generic": "fedhar.data.loaders.generic",  # last: detection accepts any CSV folder with channel columns
}


def _module(name: str):
    if name not in LOADERS:
        raise DataError(f"unknown dataset `{name}`; known: {sorted(LOADERS)} (or `auto` to detect from the folder)")
    return importlib.import_module(LOADERS[name])


def missing_data_path(path: str | Path) -> DataError:
    """The error for a dataset path that is not there; relative paths start from the working directory."""
    root = Path(path)
    where = "" if root.is_absolute() else f" (relative to the working directory: {Path.cwd() / root})"
    return DataError(f"data path {root} does not exist{where}; point `data.path` (on the command line: the data "
                     "argument) at the unpacked dataset folder, or run from the folder the path is relative to")  # fmt: skip


def check_data_path(dataset: str, path: str | Path | None) -> None:
    """Fail before any work (and before a run folder exists) when a real dataset's path is unset or missing."""
    if dataset == "synthetic":
        return
    if path is None:
        raise DataError(f"`data.path` is not set; point it at the unpacked {dataset} folder")
    if not Path(path).exists():
        raise missing_data_path(path)


def detect_layout(path: str | Path) -> str:
    """Name of the loader whose official layout ``path`` holds."""
    root = Path(path)
    if not root.exists():
        raise missing_data_path(root)
    for candidate in (root, root.parent):
        for name in LOADERS:
            if _module(name).detect(candidate):
                if candidate == root:
                    return name
                raise DataError(f"{root}: no known dataset layout here, but its parent {candidate} holds a {name} "
                                "layout: point at the archive's top folder")  # fmt: skip
    raise DataError(
        f"{root}: no known dataset layout found (looked for {sorted(LOADERS)}); "
        "check that the path is the unpacked archive's top folder, or name the loader "
        "(`data.dataset`; on the command line --dataset)"
    )


def loader_options(name: str) -> list[str]:
    """The keyword options loader ``name`` accepts (the parameters of its ``load`` after ``root``)."""
    return list(inspect.signature(_module(name).load).parameters)[1:]


def load_recordings(path: str | Path, dataset: str = "auto", **options: Any) -> RecordingSet:
    """Read a dataset folder into recordings in canonical units (acc in g, gyro in rad/s).

    An option the loader does not have fails here, by name, rather than as a TypeError from inside it.
    """
    name = detect_layout(path) if dataset == "auto" else dataset
    root = Path(path)
    if not root.exists():
        raise missing_data_path(root)
    accepted = loader_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"the {name} loader has no option {', '.join(f'`{o}`' for o in unknown)}; "
            f"it accepts {accepted}; fix `data.loader_options`"
        )
    rate = options.get("sample_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0):
        raise ConfigError(f"the {name} loader's sample_rate must be a positive number of Hz, got {rate!r}")
    return _module(name).load(root, **options)
