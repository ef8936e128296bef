"""The window set: the one in-memory form that training, clients and benchmarks consume."""

from __future__ import annotations

import math
import os
import uuid
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedhar.data.recording import UNLABELLED, Recording, RecordingSet, SensorLayout, natural_key
from fedhar.errors import DataError

#: Per-window metadata columns; each is a 1-D array aligned with ``WindowSet.x``.
META_FIELDS = ("subject", "dataset", "device", "placement", "session")


@dataclass
class WindowSet:
    """Fixed-length windows ``x`` [N, channels, samples] with labels and per-window domain tags."""

    x: np.ndarray  # float32 [N, C, T]
    y: np.ndarray  # int64 [N]
    label_names: list[str]
    layout: SensorLayout
    sample_rate: float
    subject: np.ndarray  # str [N]
    dataset: np.ndarray
    device: np.ndarray
    placement: np.ndarray
    session: np.ndarray
    start_s: np.ndarray  # float64 [N]: window start, seconds from the start of its recording
    synthetic: bool = False
    notes: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.x.ndim != 3 or self.x.shape[1] != self.layout.num_channels:
            raise DataError(f"windows must be [N, {self.layout.num_channels}, samples], got {self.x.shape}")
        for name in ("y", *META_FIELDS, "start_s"):
            if len(getattr(self, name)) != n:
                raise DataError(f"window field `{name}` has {len(getattr(self, name))} entries for {n} windows")
        if n and (self.y.min() < 0 or self.y.max() >= len(self.label_names)):
            raise DataError(
                f"labels span {self.y.min()}..{self.y.max()} but the label table has {len(self.label_names)} names"
            )

    def __len__(self) -> int:
        return len(self.x)

    @property
    def num_channels(self) -> int:
        return self.x.shape[1]

    @property
    def window_len(self) -> int:
        return self.x.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, index: np.ndarray) -> "WindowSet":
        """Windows at ``index`` (bool mask or integer positions), sharing the label table."""
        return WindowSet(
            x=self.x[index],
            y=self.y[index],
            label_names=self.label_names,
            layout=self.layout,
            sample_rate=self.sample_rate,
            **{f: getattr(self, f)[index] for f in META_FIELDS},
            start_s=self.start_s[index],
            synthetic=self.synthetic,
            notes=self.notes,
        )

    def where(self, **tags: list[str] | str) -> "WindowSet":
        """Windows whose tags match, e.g. ``where(subject=["1", "3"], placement="waist")``."""
        mask = np.ones(len(self), dtype=bool)
        for name, values in tags.items():
            if name not in META_FIELDS:
                raise DataError(f"unknown window tag `{name}`; known tags: {list(META_FIELDS)}")
            values = [values] if isinstance(values, str) else list(values)
            mask &= np.isin(getattr(self, name), np.asarray(values, dtype=str))
        return self.subset(mask)

    def onto_classes(self, classes: list[str]) -> "WindowSet":
        """Labels re-indexed onto ``classes`` (a model's order); windows of other labels are dropped."""
        index = {name: i for i, name in enumerate(classes)}
        lut = np.array([index.get(name, -1) for name in self.label_names], dtype=np.int64)
        y = lut[self.y] if len(self) else self.y
        kept = self.subset(y >= 0)
        kept.y, kept.label_names = y[y >= 0], list(classes)
        return kept

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.num_classes)

    def counts_by(self, tag: str) -> dict[str, list[int]]:
        """Windows per class for each value of a tag (subject, device, ...)."""
        col = getattr(self, tag)
        return {
            str(v): np.bincount(self.y[col == v], minlength=self.num_classes).tolist()
            for v in sorted(set(col.tolist()), key=natural_key)
        }

    @staticmethod
    def concat(parts: list["WindowSet"]) -> "WindowSet":
        """Join window sets with the same label table, channels, rate and length."""
        if not parts:
            raise DataError("nothing to concatenate: no window sets given")
        first = parts[0]
        for p in parts[1:]:
            if p.label_names != first.label_names or p.layout != first.layout:
                raise DataError("cannot join window sets with different label tables or channels; map them first")
            if p.sample_rate != first.sample_rate or p.window_len != first.window_len:
                raise DataError("cannot join window sets with different sample rates or window lengths; resample first")
        return WindowSet(
            x=np.concatenate([p.x for p in parts]),
            y=np.concatenate([p.y for p in parts]),
            label_names=first.label_names,
            layout=first.layout,
            sample_rate=first.sample_rate,
            **{f: np.concatenate([getattr(p, f) for p in parts]) for f in META_FIELDS},
            start_s=np.concatenate([p.start_s for p in parts]),
            synthetic=any(p.synthetic for p in parts),
            notes=first.notes,
        )

    # ---- files: .npz, no pickle -------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` window set (string arrays as unicode, no pickled objects)."""
        path = Path(path)
        # unique temp name: two processes filling the same cache entry must not share a temp file
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz")
        np.savez(
            tmp,
            x=self.x,
            y=self.y,
            label_names=np.asarray(self.label_names, dtype=str),
            channels=np.asarray(self.layout.channels, dtype=str),
            group_names=np.asarray([g for g, _ in self.layout.groups], dtype=str),
            group_sizes=np.asarray([len(i) for _, i in self.layout.groups], dtype=np.int64),
            units=np.asarray([u for _, u in self.layout.units], dtype=str),
            sample_rate=np.asarray(self.sample_rate),
            start_s=self.start_s,
            synthetic=np.asarray(self.synthetic),
            **{f: np.asarray(getattr(self, f), dtype=str) for f in META_FIELDS},
        )
        tmp.replace(path)  # atomic: an interrupted save never leaves a half-written file

    @classmethod
    def load(cls, path: str | Path) -> "WindowSet":
        """Read an ``.npz`` window set written by :meth:`save` (or by hand with the same keys).

        Nothing is unpickled, no array is allocated before its header was checked against the bytes
        the file holds (:func:`read_npz`), and every array's shape and type is checked before use."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"window file {path} does not exist")
        z = read_npz(path)
        missing = [k for k in ("x", "y", "label_names") if k not in z]
        if missing:
            raise DataError(f"{path} lacks arrays {missing}; a window set needs at least x [N,C,T], y [N], label_names")
        x = z["x"]
        if x.ndim != 3:
            raise DataError(f"{path}: x must be [N, channels, samples], got shape {x.shape}")
        if x.dtype.kind not in "fiu":
            raise DataError(f"{path}: x holds {x.dtype} values, not numbers")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{path}: x contains NaN or Inf values; clean or drop those windows first")
        n, c = x.shape[:2]

        def column(key: str, kinds: str, what: str, length: int | None = n) -> np.ndarray:
            a = z[key]
            if a.ndim != 1 or (length is not None and len(a) != length) or (len(a) and a.dtype.kind not in kinds):
                size = f"{length} " if length is not None else ""
                raise DataError(f"{path}: array `{key}` must be {size}{what} (one per window), got {a.dtype} of "
                                f"shape {a.shape}; the file is not a window set written by fedhar")  # fmt: skip
            return a

        def scalar(key: str, kinds: str, what: str):
            a = z[key]
            if a.size != 1 or a.dtype.kind not in kinds:
                raise DataError(f"{path}: array `{key}` must be one {what}, got {a.dtype} of shape {a.shape}")
            return a.reshape(()).item()

        y = column("y", "iuf", "integer class indices")
        if y.dtype.kind == "f" and not (np.isfinite(y) & (y == np.round(y))).all():
            raise DataError(f"{path}: array `y` must hold integer class indices, found fractions or NaN")
        label_names = [str(s) for s in column("label_names", "US", "text", None)]
        if len(set(label_names)) != len(label_names) or "" in label_names:
            raise DataError(f"{path}: label_names {label_names} must be distinct, non-empty names")
        if "channels" in z:
            absent = [k for k in ("group_names", "group_sizes", "units") if k not in z]
            if absent:
                raise DataError(f"{path} has `channels` but lacks {absent}; save the windows with WindowSet.save")
            channels = [str(s) for s in column("channels", "US", "text", c)]
            names = [str(s) for s in column("group_names", "US", "text", None)]
            sizes = [int(s) for s in column("group_sizes", "iu", "integer group sizes", len(names))]
            units = [str(s) for s in column("units", "US", "text", len(names))]
            if any(s < 1 for s in sizes) or sum(sizes) != c or len(set(names)) != len(names) or len(set(channels)) != c:
                raise DataError(f"{path}: sensor groups {names} of sizes {sizes} do not split the {c} distinct "
                                f"channels {channels}")  # fmt: skip
            groups, start = {}, 0
            for g, s in zip(names, sizes):
                groups[g] = channels[start : start + s]
                start += s
            layout = SensorLayout.from_groups(groups, dict(zip(names, units)))
        else:
            layout = SensorLayout.from_groups({"ch": [f"ch{i}" for i in range(c)]}, {"ch": "unknown"})
        meta = {f: (column(f, "USiuf", "tags").astype(str) if f in z else np.full(n, "unknown")) for f in META_FIELDS}
        if "subject" not in z:
            meta["subject"] = np.full(n, "0")
        rate = float(scalar("sample_rate", "iuf", "number (Hz)")) if "sample_rate" in z else float("nan")
        if not (rate > 0 and np.isfinite(rate)) and not np.isnan(rate):
            raise DataError(f"{path}: sample_rate {rate} must be a positive number of Hz")
        return cls(
            x=x,
            y=y.astype(np.int64),
            label_names=label_names,
            layout=layout,
            sample_rate=rate,
            start_s=column("start_s", "iuf", "start times (s)").astype(np.float64) if "start_s" in z else np.zeros(n),
            synthetic=bool(scalar("synthetic", "biu", "flag")) if "synthetic" in z else False,
            **meta,
        )


#: what reading a damaged .npz raises: zipfile's errors, a corrupt deflate stream (zlib.error), an unknown zip
#: version (NotImplementedError), a garbled .npy header (ValueError, or tokenize's TokenError from numpy's parser)
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, NotImplementedError, RuntimeError,
           zlib.error, tokenize.TokenError, SyntaxError)  # fmt: skip
#: deflate expands data at most ~1032 times; a member claiming more is a lie (or a zip bomb)
_MAX_DEFLATE_RATIO = 1100


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without pickle and without trusting its headers.

    Each member's ``.npy`` header (shape, dtype) is checked against the bytes the member holds before
    anything is allocated, so a file claiming a huge array fails instead of exhausting memory; object
    arrays (which would need pickle) are refused. Any damage is a DataError naming the file."""
    try:
        zf = zipfile.ZipFile(path)
    except _DAMAGE as e:
        raise DataError(f"{path} is not an .npz window set (not a readable zip archive: {e}); write it with "
                        "WindowSet.save or numpy.savez") from None  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    try:
        with zf:
            members = [m for m in zf.infolist() if m.filename.endswith(".npy")]
            for m in members:
                _check_npy_header(zf, m, path)
            for m in members:
                with zf.open(m) as f:
                    arrays[m.filename[: -len(".npy")]] = np.lib.format.read_array(f, allow_pickle=False)
    except DataError:
        raise
    except _DAMAGE as e:
        raise DataError(f"{path} is damaged: {type(e).__name__}: {e}; write or copy the window set again") from None
    return arrays


def _check_npy_header(zf: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path) -> None:
    """Fail unless ``member`` holds exactly the bytes its .npy header promises, of a dtype without objects."""
    name = member.filename
    if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"{path}: member {name} uses an unsupported compression (method {member.compress_type})")
    if member.compress_type == zipfile.ZIP_DEFLATED and member.file_size > _MAX_DEFLATE_RATIO * member.compress_size + 4096:
        raise DataError(f"{path}: member {name} claims {member.file_size} bytes from {member.compress_size} "
                        "compressed ones, more than compression allows: the archive is damaged or hostile")  # fmt: skip
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{path}: member {name} is in .npy format {version}, which window sets never use")
        header = f.tell()
    if dtype.hasobject:
        raise DataError(f"{path}: array {name} holds Python objects, which fedhar never unpickles; save numbers and "
                        "text only (WindowSet.save)")  # fmt: skip
    claimed = math.prod(int(d) for d in shape) * dtype.itemsize
    held = member.file_size - header
    if any(int(d) < 0 for d in shape) or claimed != held:
        raise DataError(f"{path}: array {name} claims shape {tuple(shape)} of {dtype} ({claimed} bytes) but the file "
                        f"holds {held} bytes of it: truncated or tampered; write or copy it again")  # fmt: skip


def window_recording(
    rec: Recording, length: int, step: int, label_rule: str = "inside", min_fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut one recording into windows; returns (x [N,C,T], y [N], start sample [N]).

    ``label_rule="inside"`` keeps windows wholly inside one labelled segment (clean labels,
    the usual HAR protocol); ``"majority"`` keeps windows whose most frequent label covers at
    least ``min_fraction`` of the samples and is not unlabelled.
    """
    n = rec.signal.shape[0]
    if n < length:
        return np.empty((0, rec.signal.shape[1], length), np.float32), np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.arange(0, n - length + 1, step)
    idx = starts[:, None] + np.arange(length)[None, :]
    lab = rec.labels[idx]  # [N, T]
    if label_rule == "inside":
        keep = (lab == lab[:, :1]).all(axis=1) & (lab[:, 0] != UNLABELLED)
        y = lab[:, 0]
    elif label_rule == "majority":
        shifted = lab + 1  # UNLABELLED → 0
        counts = np.apply_along_axis(np.bincount, 1, shifted, minlength=int(shifted.max()) + 1)
        best = counts.argmax(axis=1)
        keep = (best != 0) & (counts[np.arange(len(best)), best] >= min_fraction * length)
        y = best - 1
    else:
        raise DataError(f"unknown label rule `{label_rule}`; use `inside` or `majority`")
    starts = starts[keep]
    x = rec.signal[starts[:, None] + np.arange(length)[None, :]]  # [N, T, C]
    return np.ascontiguousarray(x.transpose(0, 2, 1)), y[keep].astype(np.int64), starts


def make_windows(
    rs: RecordingSet,
    length: int,
    overlap: float = 0.5,
    label_rule: str = "inside",
    min_fraction: float = 0.5,
) -> WindowSet:
    """Window every recording of a set (all must share one sample rate; resample first)."""
    if not 0 <= overlap < 1:
        raise DataError(f"window overlap must be in [0, 1), got {overlap}")
    if length < 2:
        raise DataError(f"window length must be at least 2 samples, got {length}")
    rates = {r.sample_rate for r in rs.recordings}
    if len(rates) > 1:
        raise DataError(f"recordings have different sample rates {sorted(rates)}; set `data.sample_rate` to resample")
    step = max(1, int(round(length * (1 - overlap))))
    short = [r for r in rs.recordings if r.signal.shape[0] < length]
    if short:
        rs.skipped.append(
            f"{len(short)} recordings shorter than one {length}-sample window dropped "
            f"(e.g. {short[0].source or short[0].session}, {short[0].signal.shape[0]} samples)"
        )
    xs, ys, meta, starts = [], [], {f: [] for f in META_FIELDS}, []
    for rec in rs.recordings:
        x, y, s = window_recording(rec, length, step, label_rule, min_fraction)
        if not np.isfinite(x).all():
            bad = ~np.isfinite(x).all(axis=(1, 2))
            rs.skipped.append(f"{rec.source or rec.session}: dropped {int(bad.sum())} windows with NaN/Inf samples")
            x, y, s = x[~bad], y[~bad], s[~bad]
        xs.append(x)
        ys.append(y)
        starts.append(s / rec.sample_rate)
        for f in META_FIELDS:
            meta[f].append(np.full(len(y), getattr(rec, f), dtype=object))
    if not xs or sum(len(y) for y in ys) == 0:
        labelled = sum(int((r.labels != UNLABELLED).sum()) for r in rs.recordings)
        sources = sorted({r.source or r.session for r in rs.recordings})
        where = f"{rs.dataset} ({', '.join(sources[:2])}{' …' if len(sources) > 2 else ''})" if sources else rs.dataset
        why = (f"{labelled} samples carry a label of the classes {list(rs.label_names)}" if labelled else
               f"no sample carries a label of the classes {list(rs.label_names)} (no label column, empty labels, "
               "or labels the classes do not name)")  # fmt: skip
        notes = f"; notes: {' | '.join(rs.skipped)}" if rs.skipped else ""
        raise DataError(f"no {length}-sample window of {where} lies inside a labelled segment: {why}; a training "
                        f"config can use shorter windows or `label_rule: majority`{notes}")  # fmt: skip
    return WindowSet(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        label_names=list(rs.label_names),
        layout=rs.layout,
        sample_rate=float(next(iter(rates))),
        **{f: np.concatenate(v).astype(str) for f, v in meta.items()},
        start_s=np.concatenate(starts).astype(np.float64),
    )
