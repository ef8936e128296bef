"""recording files → windows, with a cache keyed by every preprocessing parameter."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedhar.cache import cache_root
from fedhar.config import DataConfig
from fedhar.data.activities import common_label_map
from fedhar.data.loaders import check_data_path, detect_layout, load_recordings, loader_options
from fedhar.data.loaders.common import walk_files
from fedhar.data.preprocess import relabel, resample_recording, select_sensors
from fedhar.data.recording import RecordingSet
from fedhar.data.splits import split_by_subject
from fedhar.data.windows import WindowSet, make_windows
from fedhar.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Bump when windowing, a loader or the cache key changes, so old caches are not reused.
PIPELINE_VERSION = 3
#: data settings applied after the cached windows (splits, normalisation, label budgets)
NOT_CACHED = ("split", "train_overlap", "cache_dir", "normalize", "labelled_per_class", "labelled_percent",
              "labelled_per_subject")


def read_recordings(cfg: DataConfig, seed: int = 0, missing_classes_ok: bool = False) -> RecordingSet:
    """Load, relabel, select sensors and resample recordings as ``cfg`` says."""
    if cfg.dataset == "synthetic":
        from fedhar.data.synthetic import SyntheticSpec, generate

        rs = generate(SyntheticSpec.from_dict(cfg.synthetic), seed=seed)
    else:
        check_data_path(cfg.dataset, cfg.path)
        name = detect_layout(cfg.path) if cfg.dataset == "auto" else cfg.dataset
        options: dict = {}
        # loaders that fuse unpaired sensors onto a grid grid at the target rate at once (one interpolation,
        # not two); generic's option is the rate untimed CSVs were recorded at, never assumed (loader_options)
        if cfg.sample_rate is not None and name != "generic" and "sample_rate" in loader_options(name):
            options["sample_rate"] = cfg.sample_rate
        if cfg.sensors and "sensors" in loader_options(name):  # files with extra sensors join the others
            options["sensors"] = list(cfg.sensors)
        options = {**options, **cfg.loader_options}
        if isinstance(cfg.placement, (list, tuple)):  # each placement as the loader reads it alone, then joined
            if name == "generic" and len(cfg.placement) > 1:
                raise ConfigError(f"data.placement {list(cfg.placement)}: the generic loader reads one folder and "
                                  "only tags it with data.placement; give one name (or one folder per placement, "
                                  "each its own run)")  # fmt: skip
            rs = join_placements([(p, load_recordings(cfg.path, name, **{**options, "placement": p}))
                                  for p in cfg.placement])  # fmt: skip
        else:
            one = {"placement": cfg.placement} if cfg.placement else {}
            rs = load_recordings(cfg.path, name, **{**options, **one})
    if cfg.common_labels:  # first onto the common names, then label_map renames those
        rs = relabel(rs, None, common_label_map(rs.dataset))
    rs = relabel(rs, cfg.classes, cfg.label_map, missing_ok=missing_classes_ok)
    rs = select_sensors(rs, cfg.sensors)
    if cfg.sample_rate is not None:
        rs.recordings = [resample_recording(r, cfg.sample_rate) for r in rs.recordings]
    return rs


def join_placements(parts: list[tuple[str, RecordingSet]]) -> RecordingSet:
    """The recordings of each ``(data.placement value, what the loader read for it)`` as one set; each recording
    keeps its loader's placement tag. Label tables that differ (a generic folder's, read from its files) are
    merged in order of first appearance, and each recording's label ids re-indexed onto the merged table."""
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    owner: dict[str, str] = {}  # placement tag → the data.placement value that read it
    for value, rs in parts:
        for tag in sorted({r.placement for r in rs.recordings}):
            if tag in owner:
                raise DataError(f"data.placement lists `{owner[tag]}` and `{value}`, which both read {rs.dataset}'s "
                                f"`{tag}` recordings; list each placement once")  # fmt: skip
            owner[tag] = value
    layouts = {r.layout for _, rs in parts for r in rs.recordings}
    if len(layouts) > 1:
        raise DataError(f"data.placement {[v for v, _ in parts]}: the placements' recordings have different "
                        f"channels {[list(x.channels) for x in layouts]}; list placements of one sensor set, or "
                        "keep the groups they share with data.sensors")  # fmt: skip
    names = list(first.label_names)
    for _, rs in parts[1:]:
        names += [n for n in rs.label_names if n not in names]
    recordings, skipped = [], []
    for _, rs in parts:
        if list(rs.label_names) != names:
            index = np.asarray([names.index(n) for n in rs.label_names], dtype=np.int64)
            for r in rs.recordings:
                r.labels = np.where(r.labels >= 0, index[np.clip(r.labels, 0, None)], r.labels)
        recordings += rs.recordings
        skipped += rs.skipped
    return RecordingSet(recordings, names, first.dataset, skipped=skipped)


def _fingerprint(cfg: DataConfig, seed: int, lenient: bool = False) -> str:
    """Cache key: preprocessing parameters plus the names, sizes and mtimes (ns) of the input files."""
    params = {k: v for k, v in cfg.__dict__.items() if k not in NOT_CACHED}
    params["version"] = PIPELINE_VERSION
    if lenient:  # windows that may lack some of data.classes never answer a strict (training) request
        params["missing_classes_ok"] = True
    if cfg.dataset == "synthetic":
        from fedhar.data.synthetic import GENERATOR_VERSION

        params["seed"] = seed
        params["generator_version"] = GENERATOR_VERSION
    else:
        root = Path(cfg.path or ".").resolve()
        params["path"] = str(root)
        base = root.parent if root.is_file() else root
        files = [root] if root.is_file() else walk_files(root)  # a file: .npz windows
        params["files"] = [(str(p.relative_to(base)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def window_cache_dir(cfg: DataConfig | None = None) -> Path:
    """Where windowed arrays are cached: data.cache_dir, $FEDHAR_WINDOW_CACHE or $FEDHAR_CACHE/windows."""
    return Path((cfg and cfg.cache_dir) or os.environ.get("FEDHAR_WINDOW_CACHE") or cache_root() / "windows")


def one_csv_as_folder(path: str | Path, option: str) -> Path:
    """A path the loaders read. One CSV file becomes a one-file folder of the generic CSV layout: a folder in
    the window cache holding a link to it (and to a ``labels.txt`` beside it), so the whole pipeline applies."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{path} does not exist; point {option} at the recordings (a folder, a CSV or an .npz)")
    if not (path.is_file() and path.suffix.lower() == ".csv"):
        return path
    view = window_cache_dir() / "csv-views" / hashlib.sha256(str(path).encode()).hexdigest()[:16]
    view.mkdir(parents=True, exist_ok=True)
    for source, link in ((path, view / _link_name(path)), (path.parent / "labels.txt", view / "labels.txt")):
        if source.is_file() and not link.is_symlink():
            link.symlink_to(source)
    return view


def _link_name(csv: Path) -> str:
    """The link's name in a one-CSV view: the loaders look for ``*.csv``, so ``LAB.CSV`` is linked as ``LAB.csv``."""
    return csv.stem + ".csv"


@contextmanager
def naming_the_csv(view: Path, given: str | Path):
    """Errors raised while reading a one-CSV view (:func:`one_csv_as_folder`) name the user's file and folder,
    not the links in the window cache."""
    given = Path(given).expanduser().resolve()
    try:
        yield
    except DataError as e:
        if view == given:
            raise
        message = str(e).replace(str(view / _link_name(given)), str(given)).replace(str(view), str(given.parent))
        raise DataError(message) from None


def load_windows(cfg: DataConfig, seed: int = 0, use_cache: bool = True, missing_classes_ok: bool = False) -> WindowSet:
    """Windows for a data config; reuses the cached arrays when nothing they depend on changed.

    ``missing_classes_ok``: ``data.classes`` the files lack keep their place in the label table with no
    windows (scoring a model), instead of failing (training: usually a misspelt class)."""
    if cfg.dataset == "auto":
        if cfg.path is None:
            raise DataError("`data.dataset: auto` needs `data.path`")
        cfg = DataConfig(**{**cfg.__dict__, "dataset": detect_layout(cfg.path)})
    cache_dir = window_cache_dir(cfg)
    key = _fingerprint(cfg, seed, lenient=missing_classes_ok)
    cached = cache_dir / f"{cfg.dataset}-{key}.npz"
    skips_file = cached.with_suffix(".skipped.json")  # the skip report survives cache hits
    if use_cache and cached.is_file():
        try:
            ws = WindowSet.load(cached)
        except DataError as e:  # a damaged cache entry (a full disk, a copy cut short) is rebuilt, not trusted
            log.warning("window cache entry %s is unreadable (%s); rebuilding it", cached, e)
        else:
            ws.notes = {"skipped": _read_skips(skips_file), "cache": str(cached), "cache_hit": True}
            return ws
    t0 = time.perf_counter()
    rs = read_recordings(cfg, seed, missing_classes_ok)
    ws = make_windows(rs, cfg.window, cfg.overlap, cfg.label_rule)
    ws.synthetic = cfg.dataset == "synthetic"
    ws.notes = {"skipped": list(rs.skipped), "cache": str(cached), "cache_hit": False,
                "load_s": round(time.perf_counter() - t0, 2)}
    if use_cache:
        cache_dir.mkdir(parents=True, exist_ok=True)
        skips_file.write_text(json.dumps(ws.notes["skipped"]))
        ws.save(cached)
    return ws


def _read_skips(path: Path) -> list[str]:
    """The skip report stored beside a cached window set ([] when absent or damaged)."""
    try:
        skipped = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (ValueError, OSError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return []
    return [str(s) for s in skipped] if isinstance(skipped, list) else []


def split_windows(cfg: DataConfig, seed: int = 0) -> tuple[WindowSet, WindowSet, WindowSet]:
    """Subject-disjoint train / validation / test windows; the training subjects' windows are cut at
    ``cfg.train_overlap`` when it is set (validation and test always at ``cfg.overlap``)."""
    train, val, test = split_by_subject(load_windows(cfg, seed), cfg.split, seed)
    if cfg.train_overlap is not None and cfg.train_overlap != cfg.overlap:
        dense = load_windows(replace(cfg, overlap=cfg.train_overlap, train_overlap=None), seed)
        train = dense.where(subject=sorted(set(train.subject.tolist())))
    return train, val, test
