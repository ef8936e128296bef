"""Subject-disjoint splits: explicit lists, named protocols, seeded fractions, k-fold, leave-one-domain-out."""

from __future__ import annotations

import numpy as np

from fedhar.config import SplitConfig
from fedhar.data.windows import WindowSet
from fedhar.errors import DataError

#: The official UCI-HAR / HAPT test subjects (the other 21 are the training subjects).
UCI_HAR_TEST_SUBJECTS = ["2", "4", "9", "10", "12", "13", "18", "20", "24"]

NAMED_SPLITS = {"uci-har": UCI_HAR_TEST_SUBJECTS}


def _sorted_subjects(ws: WindowSet) -> list[str]:
    return sorted(set(ws.subject.tolist()), key=lambda s: (0, int(s), "") if s.isdecimal() else (1, 0, s))


def split_by_subject(ws: WindowSet, cfg: SplitConfig, seed: int) -> tuple[WindowSet, WindowSet, WindowSet]:
    """Train / validation / test window sets whose subjects never overlap.

    A named split needs every one of its test subjects in the data: without them the test set
    is not the protocol's (and with none of them it would be empty).
    """
    subjects = _sorted_subjects(ws)
    if cfg.named:
        if cfg.named not in NAMED_SPLITS:
            raise DataError(f"unknown named split `{cfg.named}`; known: {sorted(NAMED_SPLITS)}")
        test = NAMED_SPLITS[cfg.named]
        absent = [s for s in test if s not in subjects]
        if absent:  # a partial test set would give figures that look comparable to the protocol's but are not
            raise DataError(
                f"split.named `{cfg.named}` tests on subjects {test}, but {absent} are not in the data "
                f"(it has {subjects}); use the full dataset, or list split.test (and split.train) instead"
            )
        rest = [s for s in subjects if s not in test]
        val = cfg.val or _take_fraction(rest, cfg.val_fraction, seed)
        train = cfg.train or [s for s in rest if s not in val]
    elif cfg.train or cfg.val or cfg.test:
        train = cfg.train or [s for s in subjects if s not in (cfg.val or []) + (cfg.test or [])]
        val, test = cfg.val or [], cfg.test or []
    else:
        shuffled = list(np.random.default_rng(seed).permutation(subjects))
        n_test = max(1, round(cfg.test_fraction * len(subjects))) if cfg.test_fraction > 0 else 0
        n_val = max(1, round(cfg.val_fraction * len(subjects))) if cfg.val_fraction > 0 else 0
        test, val = shuffled[:n_test], shuffled[n_test : n_test + n_val]
        train = shuffled[n_test + n_val :]
    train, val, test = ([str(s) for s in part] for part in (train, val, test))
    missing = sorted(set(train + val + test) - set(subjects))
    if missing:
        raise DataError(f"split names subjects {missing} that are not in the data (it has {subjects})")
    overlap = (set(train) & set(val)) | (set(train) & set(test)) | (set(val) & set(test))
    if overlap:
        raise DataError(f"subjects {sorted(overlap)} appear in more than one of train/val/test; splits must be disjoint")
    if not train:
        raise DataError("the split leaves no training subjects")
    return ws.where(subject=train), ws.where(subject=val), ws.where(subject=test)


def _take_fraction(subjects: list[str], fraction: float, seed: int) -> list[str]:
    if fraction <= 0 or len(subjects) < 2:
        return []
    n = max(1, round(fraction * len(subjects)))
    return [str(s) for s in np.random.default_rng(seed).permutation(subjects)[:n]]


def kfold_by_subject(ws: WindowSet, k: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``k`` (train subjects, test subjects) folds; every subject is tested exactly once."""
    subjects = _sorted_subjects(ws)
    if not 2 <= k <= len(subjects):
        raise DataError(f"k-fold needs 2 <= k <= {len(subjects)} subjects, got k={k}")
    order = [str(s) for s in np.random.default_rng(seed).permutation(subjects)]
    folds = [order[i::k] for i in range(k)]
    return [([s for s in order if s not in f], sorted(f, key=subjects.index)) for f in folds]


def leave_one_out(ws: WindowSet, tag: str) -> list[tuple[str, WindowSet, WindowSet]]:
    """Leave-one-dataset/device/placement-out: (held-out value, train windows, test windows)."""
    if tag not in ("dataset", "device", "placement", "subject"):
        raise DataError(f"leave-one-out works over dataset, device, placement or subject, not `{tag}`")
    values = sorted(set(getattr(ws, tag).tolist()))
    if len(values) < 2:
        raise DataError(f"leave-one-{tag}-out needs at least two {tag} values, the data has {values}")
    col = getattr(ws, tag)
    return [(v, ws.subset(col != v), ws.subset(col == v)) for v in values]


def low_label(ws: WindowSet, seed: int, per_class: int | None = None, percent: float | None = None) -> WindowSet:
    """Stratified, seeded labelled subset: ``per_class`` windows per class, or ``percent`` % of windows."""
    return ws.subset(_low_label_index(ws, seed, per_class, percent))


def _low_label_index(ws: WindowSet, seed: int, per_class: int | None, percent: float | None) -> np.ndarray:
    if (per_class is None) == (percent is None):
        raise DataError("give exactly one of per_class or percent for a low-label protocol")
    if percent is not None and not 0 < percent <= 100:
        raise DataError(f"percent must be in (0, 100], got {percent}")
    rng = np.random.default_rng(seed)
    keep = [np.empty(0, np.int64)]
    for c in range(ws.num_classes):
        idx = np.flatnonzero(ws.y == c)
        if len(idx) == 0:
            continue
        n = per_class if per_class is not None else max(1, int(round(len(idx) * percent / 100)))
        keep.append(rng.permutation(idx)[: min(n, len(idx))])
    return np.sort(np.concatenate(keep))


def labelled_seed(seed: int, client: str) -> int:
    """The seed of one client's labelled subset: the run's seed and the client's name, the same in any process."""
    import zlib

    return int(np.random.SeedSequence([seed, zlib.crc32(client.encode())]).generate_state(1)[0])


def low_label_per_client(ws: WindowSet, seed: int, client: str, per_class: int | None = None,
                         percent: float | None = None) -> WindowSet:  # fmt: skip
    """A federated client's labelled subset of its own windows (stratified per class, seeded per client)."""
    return low_label(ws, labelled_seed(seed, client), per_class, percent)


def low_label_per_subject(ws: WindowSet, seed: int, per_class: int | None = None,
                          percent: float | None = None) -> WindowSet:  # fmt: skip
    """Stratified per class *and* subject: each subject keeps what :func:`low_label_per_client` keeps for the
    federated client ``subject-<id>`` (partition by subject), so a centralized run can hold exactly the
    labelled windows a federation of its training subjects holds."""
    keep = [np.empty(0, np.int64)]
    for subject in _sorted_subjects(ws):
        idx = np.flatnonzero(ws.subject == subject)
        chosen = _low_label_index(ws.subset(idx), labelled_seed(seed, f"subject-{subject}"), per_class, percent)
        keep.append(idx[chosen])
    return ws.subset(np.sort(np.concatenate(keep)))
