"""Bring new data to a trained model: the model's data spec decides rate, window, channels and classes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedhar.config import DataConfig
from fedhar.data.activities import TO_COMMON
from fedhar.data.loaders import detect_layout
from fedhar.data.pipeline import load_windows, naming_the_csv, one_csv_as_folder
from fedhar.data.windows import WindowSet
from fedhar.errors import DataError
from fedhar.model.har_model import DataSpec

if TYPE_CHECKING:
    from fedhar.data.recording import Recording
    from fedhar.posthoc import PostHocAdapter


def windows_for_model(spec: DataSpec, path: str | Path, dataset: str = "auto",
                      label_map: dict[str, str] | None = None, units: str | None = None,
                      sample_rate: float | None = None) -> WindowSet:  # fmt: skip
    """Labelled windows from ``path`` prepared exactly as the model's training data was.

    ``units`` and ``sample_rate`` describe CSV files of raw samples whose header does not (units of
    unnamed channels, the recording rate of a file without a time column), as for ``fedhar predict``."""
    given = Path(path)
    path = one_csv_as_folder(given, "--data")  # one CSV of raw samples reads as a one-file folder
    csv_options = {k: v for k, v in (("units", units), ("sample_rate", sample_rate)) if v is not None}
    if path.suffix != ".npz" and dataset == "auto":
        dataset = "generic" if given.suffix.lower() == ".csv" else detect_layout(path)
    if csv_options and (path.suffix == ".npz" or dataset != "generic"):
        reader = "a saved window set" if path.suffix == ".npz" else f"read by the {dataset} loader"
        raise DataError(f"{given} is {reader}, whose units and rate are known; --units and --sample-rate "
                        "describe CSV files of raw samples (the generic layout)")  # fmt: skip
    if path.suffix == ".npz":
        ws = _onto_model_labels(WindowSet.load(path), spec, label_map or {}, str(path))
        check_compatible(spec, ws, str(path))
        return ws
    cut = spec.windowing  # as the training data was cut (older checkpoints: the defaults)
    same_loader = cut.get("dataset") == dataset  # a placement or loader option only means something to its loader
    cfg = DataConfig(
        dataset=dataset,
        path=str(path),
        sample_rate=spec.sample_rate,
        window=spec.window_len,
        overlap=cut.get("overlap", 0.5),
        label_rule=cut.get("label_rule", "inside"),
        placement=cut.get("placement") if same_loader else None,
        loader_options={**(_processing_options(dataset, cut.get("loader_options", {})) if same_loader else {}),
                        **csv_options},
        common_labels=bool(cut.get("common_labels")) and dataset in TO_COMMON,  # other data: already common names
        classes=spec.label_names,
        label_map={**(cut.get("label_map") or {}), **(label_map or {})} or None,
        sensors=[g for g, _ in spec.layout.groups],
    )
    with naming_the_csv(path, given):
        ws = load_windows(cfg, missing_classes_ok=True)  # the data need not hold every class the model knows
    check_compatible(spec, ws, str(given))
    return ws


#: generic-loader options that describe the training files themselves, not how to process data
_FILE_DESCRIPTIONS = ("units", "sample_rate", "labels")


def _processing_options(dataset: str, options: dict) -> dict:
    """The training data's loader options that apply to new files too: how to read them (gap limits, optional
    sensors...), not what generic training files were (their units, rate or label table: --units/--sample-rate)."""
    return {k: v for k, v in options.items() if dataset != "generic" or k not in _FILE_DESCRIPTIONS}


def _onto_model_labels(ws: WindowSet, spec: DataSpec, label_map: dict[str, str], where: str) -> WindowSet:
    """A saved window set's labels renamed by ``label_map`` and re-indexed in the model's label order."""
    names = [label_map.get(n, n) for n in ws.label_names]
    unknown = sorted(set(names) - set(spec.label_names))
    if unknown:
        raise DataError(f"{where}: labels {unknown} are not among the model's {spec.label_names}; "
                        "pass --label-map FROM=TO for each")  # fmt: skip
    return dataclasses.replace(ws, label_names=names).onto_classes(spec.label_names)


def check_compatible(spec: DataSpec, ws: WindowSet, where: str) -> None:
    if not np.isclose(ws.sample_rate, spec.sample_rate):  # NaN: a window set saved without its rate
        raise DataError(f"{where}: windows sampled at {ws.sample_rate} Hz, the model was trained at "
                        f"{spec.sample_rate} Hz; resample the data (data.sample_rate) before windowing")  # fmt: skip
    if list(ws.layout.channels) != list(spec.layout.channels):
        raise DataError(f"{where}: channels {list(ws.layout.channels)} differ from the model's {list(spec.layout.channels)}")
    if dict(ws.layout.units) != dict(spec.layout.units):
        raise DataError(f"{where}: units {dict(ws.layout.units)} differ from the model's {dict(spec.layout.units)}; "
                        "convert the windows, or score the recordings they were cut from (units are converted there)")
    if ws.window_len != spec.window_len:
        raise DataError(f"{where}: windows of {ws.window_len} samples, the model expects {spec.window_len}")
    if ws.label_names != spec.label_names:
        raise DataError(f"{where}: labels {ws.label_names} differ from the model's {spec.label_names}; pass --label-map")


def recording_windows(spec: DataSpec, path: str | Path, overlap: float = 0.5, units: str | None = None,
                      sample_rate: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:  # fmt: skip
    """A CSV of raw samples cut as the model's data was: (window starts in samples, windows [N, C, T],
    which windows are wholly finite, each window's label or None when the file has no ``label`` column).

    A window's label is the one label all its samples carry ("" otherwise: the training data's
    ``inside`` rule), so a labelled recording can be read against the predictions."""
    from fedhar.data.loaders.generic import read_signal_csv
    from fedhar.data.recording import UNLABELLED, Recording

    signal, layout, rate, text = read_signal_csv(path, units=units, sample_rate=sample_rate)
    names: list[str] = []
    ids = np.full(len(signal), UNLABELLED, np.int64)
    if text is not None:  # per distinct label, not per sample: recordings run to millions of samples
        distinct, per_sample = np.unique(text.astype(str), return_inverse=True)
        rename = spec.windowing.get("label_map") or {}  # the names the model's training data were given
        renamed = [rename.get(t, t) for t in distinct.tolist()]
        names = sorted(set(renamed) - {""})
        ids = np.array([names.index(n) if n else UNLABELLED for n in renamed], np.int64)[per_sample.ravel()]
    rec = conform_recording(spec, Recording(signal, ids, rate, "-", "-", "predict", layout=layout, source=str(path)))
    starts, x, finite = cut_recording(spec, rec, overlap)
    if text is None:
        return starts, x, finite, None
    per_sample = rec.labels[starts[:, None] + np.arange(spec.window_len)]
    whole = (per_sample == per_sample[:, :1]).all(axis=1) & (per_sample[:, 0] != UNLABELLED)
    window_labels = np.array([names[k] if ok else "" for k, ok in zip(per_sample[:, 0], whole)], dtype=object)
    return starts, x, finite, window_labels


def conform_recording(spec: DataSpec, rec: Recording) -> Recording:
    """``rec`` with the model's channels, in its order, at its sample rate."""
    from dataclasses import replace

    from fedhar.data.preprocess import resample_recording

    missing = [c for c in spec.layout.channels if c not in rec.layout.channels]
    if missing:
        raise DataError(f"{rec.source}: the model needs channels {missing}, the file has {list(rec.layout.channels)}")
    keep = [rec.layout.channels.index(c) for c in spec.layout.channels]
    return resample_recording(replace(rec, signal=rec.signal[:, keep], layout=spec.layout), spec.sample_rate)


def cut_recording(spec: DataSpec, rec: Recording, overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of a conformed recording from its first sample on, as ``fedhar predict`` cuts them: (starts in
    samples, windows [N, C, T], which windows are wholly finite)."""
    n, length = rec.signal.shape[0], spec.window_len
    if n < length:
        raise DataError(f"{rec.source}: {n / spec.sample_rate:.2f} s of signal, shorter than one {length}-sample window")
    if not 0 <= overlap < 1:
        raise DataError(f"overlap must be in [0, 1), got {overlap}")
    step = max(1, int(round(length * (1 - overlap))))
    starts = np.arange(0, n - length + 1, step)
    x = np.ascontiguousarray(rec.signal[starts[:, None] + np.arange(length)].transpose(0, 2, 1))
    return starts, x, np.isfinite(x).all(axis=(1, 2))


def predict_recordings(model, paths: list[str | Path], overlap: float = 0.5, units: str | None = None,
                       sample_rate: float | None = None, posthoc: PostHocAdapter | None = None
                       ) -> tuple[list[dict], dict | None]:  # fmt: skip
    """Activity per window of CSVs of raw samples (recording, start/end time in s from its first sample,
    activity, confidence, and the window's own ``label`` where the file has a label column), and the
    post-hoc adapter's report (None without ``posthoc``).

    With ``posthoc`` the recordings together are one client (one wearer's history) and the adapter relabels
    their windows from those windows (fedhar/posthoc/). Confidence stays the model's probability of the label
    written, and ``model_activity`` keeps the model's own label, so a relabelled window shows how much the
    model disagreed.
    """
    import torch

    from fedhar.model.har_model import predict_logits

    spec: DataSpec = model.data
    cut = [recording_windows(spec, path, overlap, units, sample_rate) for path in paths]
    x = np.concatenate([w[finite] for _, w, finite, _ in cut])
    probs = torch.softmax(torch.from_numpy(predict_logits(model, x)), dim=1).numpy()
    model_labels = labels = probs.argmax(axis=1)
    report = None
    if posthoc is not None:
        labels, report = posthoc.apply_client(x, labels, spec.label_names, spec.layout)
    rows, j = [], 0
    for path, (starts, _, finite, window_labels) in zip(paths, cut):
        for i, s in enumerate(starts):
            row = {"recording": str(path), "start_s": round(s / spec.sample_rate, 3),
                   "end_s": round((s + spec.window_len) / spec.sample_rate, 3)}  # fmt: skip
            if window_labels is not None:
                row["label"] = window_labels[i]
            if finite[i]:
                k = int(labels[j])
                row.update(activity=spec.label_names[k], confidence=round(float(probs[j, k]), 4))
                if posthoc is not None:
                    row["model_activity"] = spec.label_names[int(model_labels[j])]
                j += 1
            else:
                row.update(activity="", confidence=float("nan"))  # NaN/Inf samples in this window: no prediction
                if posthoc is not None:
                    row["model_activity"] = ""
            rows.append(row)
    return rows, report
