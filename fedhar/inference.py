"""Bring new data to a trained model: the model's data spec decides rate, window, channels and classes."""

from __future__ import annotations

from pathlib import Path

from fedhar.config import DataConfig
from fedhar.data.pipeline import load_windows
from fedhar.data.windows import WindowSet
from fedhar.errors import DataError
from fedhar.model.har_model import DataSpec


def windows_for_model(spec: DataSpec, path: str | Path, dataset: str = "auto",
                      label_map: dict[str, str] | None = None) -> WindowSet:  # fmt: skip
    """Labelled windows from ``path`` prepared exactly as the model's training data was."""
    path = Path(path)
    if path.suffix == ".npz":
        ws = WindowSet.load(path)
        check_compatible(spec, ws, str(path))
        return ws
    cfg = DataConfig(
        dataset=dataset,
        path=str(path),
        sample_rate=spec.sample_rate,
        window=spec.window_len,
        overlap=0.5,
        classes=spec.label_names,
        label_map=label_map,
        sensors=[g for g, _ in spec.layout.groups],
    )
    ws = load_windows(cfg)
    check_compatible(spec, ws, str(path))
    return ws


def check_compatible(spec: DataSpec, ws: WindowSet, where: str) -> None:
    if list(ws.layout.channels) != list(spec.layout.channels):
        raise DataError(f"{where}: channels {list(ws.layout.channels)} differ from the model's {list(spec.layout.channels)}")
    if ws.window_len != spec.window_len:
        raise DataError(f"{where}: windows of {ws.window_len} samples, the model expects {spec.window_len}")
    if ws.label_names != spec.label_names:
        raise DataError(f"{where}: labels {ws.label_names} differ from the model's {spec.label_names}; pass --label-map")
