import numpy as np
import pytest

from fedhar.data.recording import IMU6, UNLABELLED, Recording, RecordingSet, segments_to_labels
from fedhar.data.windows import WindowSet, make_windows, window_recording
from fedhar.errors import DataError


def _recording(labels, subject="1"):
    n = len(labels)
    signal = np.arange(n * 6, dtype=np.float32).reshape(n, 6)
    return Recording(signal, np.asarray(labels), 50.0, subject, "s1", "toy", layout=IMU6)


def test_inside_rule_keeps_only_windows_within_one_segment():
    labels = [0] * 8 + [1] * 8 + [UNLABELLED] * 4
    x, y, starts = window_recording(_recording(labels), length=4, step=2, label_rule="inside")
    assert list(starts) == [0, 2, 4, 8, 10, 12]
    assert list(y) == [0, 0, 0, 1, 1, 1]
    assert x.shape == (6, 6, 4)
    # channel-major: x[w, c, t] = signal[start + t, c]
    assert x[1, 2, 3] == (2 + 3) * 6 + 2


def test_majority_rule():
    labels = [0] * 3 + [1] * 5
    _, y, starts = window_recording(_recording(labels), length=4, step=2, label_rule="majority", min_fraction=0.75)
    assert [(int(s), int(c)) for s, c in zip(starts, y)] == [(0, 0), (2, 1), (4, 1)]
    _, y, starts = window_recording(_recording(labels), length=4, step=2, label_rule="majority", min_fraction=0.8)
    assert [(int(s), int(c)) for s, c in zip(starts, y)] == [(4, 1)]


def test_majority_rule_drops_mostly_unlabelled_windows():
    """Unlabelled samples (-1) never win a window: one mostly unlabelled is dropped (not labelled -1, nor given
    its labelled minority's class); one mostly labelled keeps its class though it holds unlabelled samples."""
    labels = [UNLABELLED] * 6 + [2] * 11 + [UNLABELLED] * 7  # 24 samples; class 2 spans samples 6..16
    # windows of 8 every 4 samples: [0, 8) 6 unlabelled: dropped | [4, 12) 2 unlabelled: 2 | [8, 16) all 2 |
    # [12, 20) 5 of class 2, 3 unlabelled: 2 | [16, 24) 7 unlabelled: dropped
    _, y, starts = window_recording(_recording(labels), length=8, step=4, label_rule="majority")
    assert [(int(s), int(c)) for s, c in zip(starts, y)] == [(4, 2), (8, 2), (12, 2)]
    ws = make_windows(RecordingSet([_recording(labels)], ["a", "b", "c"], "toy"), length=8, overlap=0.5,
                      label_rule="majority")  # fmt: skip
    assert ws.y.tolist() == [2, 2, 2]
    np.testing.assert_allclose(ws.start_s, [4 / 50, 8 / 50, 12 / 50])


def test_segments_are_inclusive():
    lab = segments_to_labels(10, [(2, 4, 3)])
    assert list(lab) == [-1, -1, 3, 3, 3, -1, -1, -1, -1, -1]


def test_make_windows_tags_and_rates():
    rs = RecordingSet([_recording([0] * 20, "1"), _recording([1] * 20, "2")], ["a", "b"], "toy")
    ws = make_windows(rs, length=8, overlap=0.5)
    assert ws.x.dtype == np.float32 and ws.window_len == 8
    assert set(ws.subject) == {"1", "2"} and set(ws.dataset) == {"toy"}
    assert ws.counts_by("subject") == {"1": [4, 0], "2": [0, 4]}
    np.testing.assert_allclose(ws.start_s[:2], [0.0, 4 / 50.0])


def test_make_windows_drops_and_reports_nan_windows():
    rec = _recording([0] * 16)
    rec.signal[5, 0] = np.nan
    rs = RecordingSet([rec], ["a"], "toy")
    ws = make_windows(rs, length=4, overlap=0.0)
    assert len(ws) == 3
    assert any("NaN" in s for s in rs.skipped)


def test_no_window_fits_is_a_clear_error():
    rs = RecordingSet([_recording([0] * 5)], ["a"], "toy")
    with pytest.raises(DataError, match="no 8-sample window"):
        make_windows(rs, length=8)


def test_recording_shape_checks():
    with pytest.raises(DataError, match="6 channels"):
        Recording(np.zeros((10, 3)), np.zeros(10), 50.0, "1", "s", "toy", layout=IMU6)
    with pytest.raises(DataError, match="labels for"):
        Recording(np.zeros((10, 6)), np.zeros(9), 50.0, "1", "s", "toy", layout=IMU6)


def test_npz_roundtrip(tmp_path, tiny_windows):
    path = tmp_path / "w.npz"
    tiny_windows.save(path)
    back = WindowSet.load(path)
    np.testing.assert_array_equal(back.x, tiny_windows.x)
    np.testing.assert_array_equal(back.subject, tiny_windows.subject)
    assert back.label_names == tiny_windows.label_names and back.layout == tiny_windows.layout


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        WindowSet.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "partial.npz", x=np.zeros((2, 6, 8), np.float32))
    with pytest.raises(DataError, match="lacks arrays"):
        WindowSet.load(tmp_path / "partial.npz")
    x = np.zeros((2, 6, 8), np.float32)
    x[0, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", x=x, y=np.zeros(2, np.int64), label_names=np.array(["a"]))
    with pytest.raises(DataError, match="NaN or Inf"):
        WindowSet.load(tmp_path / "inf.npz")


def test_labels_outside_table_rejected(tiny_windows):
    with pytest.raises(DataError, match="label table"):
        WindowSet(**{**tiny_windows.__dict__, "label_names": ["only-one"]})


def test_where_and_concat(tiny_windows):
    a = tiny_windows.where(subject="1")
    b = tiny_windows.where(subject=["2", "3"])
    assert set(a.subject) == {"1"} and set(b.subject) == {"2", "3"}
    both = WindowSet.concat([a, b])
    assert len(both) == len(a) + len(b)
    with pytest.raises(DataError, match="unknown window tag"):
        tiny_windows.where(color="red")
