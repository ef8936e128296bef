"""``fedhar data info``: what a dataset folder or window file holds, before anyone trains on it.

Besides :meth:`RecordingSet.summary` (subjects, devices, placements, classes, hours) it reports
what a user needs to judge a dataset for a run: labelled time per class and per subject, how many
windows the default data settings (``DataConfig()``: 128 samples at 50 Hz, 50 % overlap, label
rule ``inside``) give per class and subject, NaN samples, recording lengths, the placements the
loader can pick instead, and every documented skip.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

from fedhar.config import DataConfig
from fedhar.data.loaders import LOADERS, detect_layout, load_recordings, loader_options
from fedhar.data.preprocess import resample_recording
from fedhar.data.recording import RecordingSet, natural_key
from fedhar.data.windows import WindowSet, make_windows
from fedhar.errors import ConfigError, DataError


def data_summary(path: str | Path, dataset: str | None = "auto", sample_rate: float | None = None) -> dict:
    """JSON-ready summary of a dataset folder (official layout) or an ``.npz`` window set.

    ``sample_rate`` is the loader's option of that name: the rate of generic CSVs without a time
    column (they cannot be read without it), the grid rate of hhar, realworld and wisdm.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give a dataset folder or an .npz window set")
    if path.is_file() and path.suffix == ".npz" and dataset in (None, "auto", "generic"):
        return _window_summary(path)
    name = detect_layout(path) if dataset in (None, "auto") else dataset
    options = {}
    if sample_rate is not None:
        if "sample_rate" not in loader_options(name):
            takes = [n for n in LOADERS if "sample_rate" in loader_options(n)]
            raise ConfigError(f"--sample-rate: {name} files have a fixed rate; the option is for {takes}")
        options["sample_rate"] = sample_rate
    rs = load_recordings(path, name, **options)
    summary = rs.summary()
    durations = np.array([r.duration_s for r in rs.recordings])
    class_hours = np.zeros(len(rs.label_names))
    subject_hours: dict[str, float] = {}
    for r in rs.recordings:
        lab = r.labels[r.labels >= 0]
        class_hours += np.bincount(lab, minlength=len(rs.label_names))[: len(rs.label_names)] / r.sample_rate / 3600
        subject_hours[r.subject] = subject_hours.get(r.subject, 0.0) + r.duration_s / 3600
    summary.update(
        path=str(path),
        loader=name,
        kind="recordings",
        placements_available=list(getattr(importlib.import_module(LOADERS[name]), "PLACEMENTS", summary["placements"])),
        label_names=list(rs.label_names),
        class_hours={n: round(float(h), 4) for n, h in zip(rs.label_names, class_hours)},
        subject_hours={s: round(subject_hours[s], 4) for s in rs.subjects()},
        recording_seconds={
            "min": round(float(durations.min()), 2),
            "median": round(float(np.median(durations)), 2),
            "max": round(float(durations.max()), 2),
        },
        nan_samples=int(sum(int((~np.isfinite(r.signal)).any(axis=1).sum()) for r in rs.recordings)),
        windows=_default_windows(rs),
    )
    return summary


def _default_windows(rs: RecordingSet) -> dict:
    """Windows per class and subject with the default data settings (what `fedhar train` would see)."""
    cfg = DataConfig()
    recordings = [resample_recording(r, cfg.sample_rate) for r in rs.recordings]
    probe = RecordingSet(recordings, list(rs.label_names), rs.dataset)
    settings = {
        "window": cfg.window, "overlap": cfg.overlap, "sample_rate_hz": cfg.sample_rate, "label_rule": cfg.label_rule
    }  # fmt: skip
    try:
        ws = make_windows(probe, cfg.window, cfg.overlap, cfg.label_rule)
    except DataError as e:
        return {"settings": settings, "total": 0, "per_class": {n: 0 for n in rs.label_names}, "per_subject": {},
                "skipped": [*probe.skipped, str(e)]}  # fmt: skip
    return {
        "settings": settings,
        "total": len(ws),
        "per_class": {n: int(c) for n, c in zip(ws.label_names, ws.class_counts())},
        "per_subject": {s: int(sum(c)) for s, c in ws.counts_by("subject").items()},
        "skipped": list(probe.skipped),
    }


def _window_summary(path: Path) -> dict:
    ws = WindowSet.load(path)
    return {
        "dataset": path.stem,
        "path": str(path),
        "loader": "generic",
        "kind": "windows",
        "windows": len(ws),
        "window_samples": ws.window_len,
        "sample_rates_hz": [ws.sample_rate] if np.isfinite(ws.sample_rate) else [],
        "subjects": sorted(set(ws.subject.tolist()), key=natural_key),
        "datasets": sorted(set(ws.dataset.tolist())),
        "devices": sorted(set(ws.device.tolist())),
        "placements": sorted(set(ws.placement.tolist())),
        "channels": list(ws.layout.channels),
        "units": dict(ws.layout.units),
        "label_names": list(ws.label_names),
        "classes": {n: int(c) for n, c in zip(ws.label_names, ws.class_counts())},
        "windows_per_subject": {s: int(sum(c)) for s, c in ws.counts_by("subject").items()},
        "synthetic": ws.synthetic,
    }


def render_summary(summary: dict):
    """The summary as rich tables (a Group, printable by a rich Console)."""
    from rich.console import Group
    from rich.table import Table

    overview = Table(title=f"fedhar data info: {summary['path']}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    rows = [("dataset / loader", f"{summary['dataset']} ({summary['loader']}, {summary['kind']})")]
    subjects = summary["subjects"]
    shown = ", ".join(subjects[:20]) + (f", … ({len(subjects)} in all)" if len(subjects) > 20 else "")
    rows.append(("subjects", f"{len(subjects)}: {shown}"))
    rows.append(("devices", ", ".join(summary["devices"])))
    placements = ", ".join(summary["placements"])
    if summary.get("placements_available") and summary["placements_available"] != summary["placements"]:
        placements += f"  (data.placement can pick: {', '.join(summary['placements_available'])})"
    rows.append(("placements", placements))
    rows.append(("sample rate (Hz)", ", ".join(f"{r:g}" for r in summary["sample_rates_hz"]) or "unknown"))
    units = ", ".join(f"{g}: {u}" for g, u in summary["units"].items())
    rows.append(("channels", f"{', '.join(summary['channels'])}  [{units}]"))
    if summary["kind"] == "windows":
        rows.append(("windows", f"{summary['windows']} × {summary['window_samples']} samples"))
    else:
        rec = summary["recording_seconds"]
        lengths = f"{rec['min']:g} / {rec['median']:g} / {rec['max']:g} s min/median/max"
        rows.append(("recordings", f"{summary['recordings']} (length {lengths})"))
        rows.append(("hours", f"{summary['hours']:g} ({summary['labelled_hours']:g} labelled)"))
        rows.append(("NaN samples", str(summary["nan_samples"])))
        w = summary["windows"]
        s = w["settings"]
        how = f"{s['window']} samples at {s['sample_rate_hz']:g} Hz, {s['overlap']:.0%} overlap"
        how += f", label rule {s['label_rule']}"
        rows.append(("default windows", f"{w['total']} ({how})"))
        skipped = summary["skipped"] + w["skipped"]
        if skipped:
            more = f" (+{len(skipped) - 5} more, see --json)" if len(skipped) > 5 else ""
            rows.append(("skipped", "\n".join(skipped[:5]) + more))
    for key, value in rows:
        overview.add_row(key, value)

    classes = Table(title="classes", title_justify="left")
    classes.add_column("class")
    if summary["kind"] == "windows":
        classes.add_column("windows", justify="right")
        for name, n in summary["classes"].items():
            classes.add_row(name, str(n))
        return Group(overview, classes)
    classes.add_column("samples", justify="right")
    classes.add_column("hours", justify="right")
    classes.add_column("windows", justify="right")
    for name, n in summary["classes"].items():
        windows = summary["windows"]["per_class"].get(name, 0)
        classes.add_row(name, str(n), f"{summary['class_hours'][name]:.3f}", str(windows))
    per_subject = Table(title="subjects", title_justify="left")
    per_subject.add_column("subject")
    per_subject.add_column("hours", justify="right")
    per_subject.add_column("windows", justify="right")
    for subject, hours in summary["subject_hours"].items():
        per_subject.add_row(subject, f"{hours:.3f}", str(summary["windows"]["per_subject"].get(subject, 0)))
    return Group(overview, classes, per_subject)


def info_command(path: str, dataset: str | None, as_json: bool, sample_rate: float | None = None) -> int:
    """Print the summary (a table, or JSON with ``as_json``); returns the exit code.

    Data problems raise :class:`DataError`, which the CLI prints as one line.
    """
    summary = data_summary(path, dataset, sample_rate)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        from rich.console import Console

        Console().print(render_summary(summary))
    return 0
