import pytest

from fedhar.config import DataConfig, SplitConfig
from fedhar.data.pipeline import split_windows
from fedhar.data.splits import kfold_by_subject, leave_one_out, low_label, split_by_subject
from fedhar.errors import DataError


def test_explicit_split_is_subject_disjoint(tiny_windows):
    tr, va, te = split_by_subject(tiny_windows, SplitConfig(train=["1", "2"], val=["3"], test=["4"]), 0)
    assert set(tr.subject) == {"1", "2"} and set(va.subject) == {"3"} and set(te.subject) == {"4"}


def test_seeded_split_is_reproducible_and_disjoint(tiny_windows):
    cfg = SplitConfig(val_fraction=0.25, test_fraction=0.25)
    a = split_by_subject(tiny_windows, cfg, 7)
    b = split_by_subject(tiny_windows, cfg, 7)
    assert [set(p.subject) for p in a] == [set(p.subject) for p in b]
    assert not (set(a[0].subject) & set(a[2].subject))


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fractions", [(0.25, 0.25), (0.2, 0.1), (0.0, 0.3)])
def test_seeded_split_partitions_all_subjects(tiny_windows, seed, fractions):
    """Train, validation and test subjects are pairwise disjoint and together every subject: none is silently
    dropped (its windows would vanish from every figure) and every window lands in exactly one part."""
    ws = _with_subjects(tiny_windows, [str(s) for s in range(1, 11)])
    val_fraction, test_fraction = fractions
    parts = split_by_subject(ws, SplitConfig(val_fraction=val_fraction, test_fraction=test_fraction), seed)
    tr, va, te = (set(p.subject.tolist()) for p in parts)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(ws.subject.tolist())
    assert sum(len(p) for p in parts) == len(ws)
    assert len(te) == round(test_fraction * 10) and len(va) == round(val_fraction * 10) and tr


def test_overlap_and_unknown_subjects_fail(tiny_windows):
    with pytest.raises(DataError, match="more than one"):
        split_by_subject(tiny_windows, SplitConfig(train=["1"], test=["1"]), 0)
    with pytest.raises(DataError, match="not in the data"):
        split_by_subject(tiny_windows, SplitConfig(train=["1"], test=["99"]), 0)


def _with_subjects(ws, subjects):
    import numpy as np

    out = ws.subset(np.arange(len(ws)))
    out.subject = np.asarray([subjects[i % len(subjects)] for i in range(len(ws))])
    return out


def test_named_uci_har_split(tiny_windows):
    from fedhar.data.splits import UCI_HAR_TEST_SUBJECTS

    ws = _with_subjects(tiny_windows, ["1", "3", "5", "6", *UCI_HAR_TEST_SUBJECTS])
    tr, va, te = split_by_subject(ws, SplitConfig(named="uci-har", val_fraction=0.0), 0)
    assert set(te.subject) == set(UCI_HAR_TEST_SUBJECTS) and set(tr.subject) == {"1", "3", "5", "6"}


def test_named_split_needs_all_its_test_subjects(tiny_windows):
    """The HAPT training copy holds none of the nine: the test set must not silently come out empty."""
    train_only = _with_subjects(tiny_windows, ["1", "3", "5", "6"])
    with pytest.raises(DataError, match=r"split.named `uci-har` tests on subjects .*, but \['2', '4', '9', '10', "
                                        r"'12', '13', '18', '20', '24'\] are not in the data .* list split.test"):
        split_by_subject(train_only, SplitConfig(named="uci-har"), 0)
    partial = _with_subjects(tiny_windows, ["1", "2", "9"])
    with pytest.raises(DataError, match=r"but \['4', '10', '12', '13', '18', '20', '24'\] are not in the data"):
        split_by_subject(partial, SplitConfig(named="uci-har"), 0)


def test_kfold_covers_each_subject_once(tiny_windows):
    folds = kfold_by_subject(tiny_windows, 2, 0)
    tested = [s for _, test in folds for s in test]
    assert sorted(tested) == ["1", "2", "3", "4"]


@pytest.mark.parametrize("k", [2, 3, 4])
def test_kfold_train_and_test_subjects_are_disjoint_and_complete(tiny_windows, k):
    """In every fold the test subjects never train, and train + test is every subject (none left out)."""
    ws = _with_subjects(tiny_windows, [str(s) for s in range(1, 9)])
    everyone = set(ws.subject.tolist())
    folds = kfold_by_subject(ws, k, 3)
    assert len(folds) == k
    for train, test in folds:
        assert train and test
        assert not set(train) & set(test), (train, test)
        assert set(train) | set(test) == everyone
        assert len(train) + len(test) == len(everyone)  # no subject listed twice either
    assert sorted((s for _, test in folds for s in test), key=int) == sorted(everyone, key=int)
    assert kfold_by_subject(ws, k, 3) == folds  # seeded: the same folds again


def test_leave_one_out(tiny_windows):
    with pytest.raises(DataError, match="at least two"):
        leave_one_out(tiny_windows, "device")
    out = leave_one_out(tiny_windows, "subject")
    assert len(out) == 4 and all(len(tr) + len(te) == len(tiny_windows) for _, tr, te in out)


@pytest.mark.parametrize("tag", ["subject", "device", "placement", "dataset"])
def test_leave_one_out_holds_out_only_the_held_out_value(tiny_windows, tag):
    """The test set of each fold is every window with the held-out value and nothing else; the training set
    is every other window (never a held-out one)."""
    import numpy as np

    ws = tiny_windows.subset(np.arange(len(tiny_windows)))
    if tag != "subject":
        setattr(ws, tag, np.asarray([f"{tag}{i % 3}" for i in range(len(ws))]))
    values = sorted(set(getattr(ws, tag).tolist()))
    out = leave_one_out(ws, tag)
    assert [v for v, _, _ in out] == values
    for held_out, train, test in out:
        assert set(getattr(test, tag).tolist()) == {held_out}
        assert len(test) == int((getattr(ws, tag) == held_out).sum())
        assert held_out not in set(getattr(train, tag).tolist())
        assert set(getattr(train, tag).tolist()) == set(values) - {held_out}


def test_low_label_protocols(tiny_windows):
    few = low_label(tiny_windows, 0, per_class=2)
    assert list(few.class_counts()) == [2, 2, 2]
    pct = low_label(tiny_windows, 0, percent=50)
    assert list(pct.class_counts()) == [16, 16, 16]
    with pytest.raises(DataError):
        low_label(tiny_windows, 0)


def test_train_overlap_densifies_only_the_training_subjects():
    split = SplitConfig(val_fraction=0.25, test_fraction=0.25)
    plain = split_windows(DataConfig(split=split), seed=0)
    dense = split_windows(DataConfig(split=split, train_overlap=0.75), seed=0)
    assert [set(p.subject) for p in plain] == [set(p.subject) for p in dense]
    assert 1.8 * len(plain[0]) < len(dense[0]) < 2.2 * len(plain[0])  # step 32 instead of 64 samples
    for a, b in zip(plain[1:], dense[1:]):  # validation and test windows are untouched
        assert len(a) == len(b) and (a.x == b.x).all()
