import numpy as np
import pytest

from fedhar.data.preprocess import Normalizer, relabel, resample_recording, to_canonical
from fedhar.data.recording import IMU6, Recording, RecordingSet
from fedhar.errors import DataError


def test_unit_conversion():
    np.testing.assert_allclose(to_canonical(np.array([9.80665]), "acc", "m/s^2"), [1.0])
    np.testing.assert_allclose(to_canonical(np.array([180.0]), "gyro", "deg/s"), [np.pi])
    with pytest.raises(DataError, match="unknown unit"):
        to_canonical(np.array([1.0]), "acc", "furlongs")


def test_resample_halves_rate_and_keeps_a_sine():
    t = np.arange(200) / 100.0
    sig = np.stack([np.sin(2 * np.pi * 2 * t)] * 6, axis=1)
    labels = np.repeat([0, 1], 100)
    rec = Recording(sig, labels, 100.0, "1", "s", "toy", layout=IMU6)
    out = resample_recording(rec, 50.0)
    assert out.sample_rate == 50.0 and out.signal.shape == (100, 6)
    np.testing.assert_allclose(out.signal[:, 0], np.sin(2 * np.pi * 2 * np.arange(100) / 50.0), atol=1e-5)
    assert out.labels[0] == 0 and out.labels[-1] == 1


def test_relabel_maps_and_selects():
    rec = Recording(np.zeros((4, 6)), np.array([0, 1, 2, -1]), 50.0, "1", "s", "toy", layout=IMU6)
    rs = RecordingSet([rec], ["walk", "run", "sit"], "toy")
    out = relabel(rs, ["sit", "locomotion"], {"walk": "locomotion", "run": "locomotion"})
    assert out.label_names == ["sit", "locomotion"]
    assert list(out.recordings[0].labels) == [1, 1, 0, -1]
    with pytest.raises(DataError, match="not labels"):
        relabel(RecordingSet([rec], ["a", "b", "c"], "toy"), ["zzz"], None)


def test_normalizer_fit_and_moments_agree(tiny_windows):
    n = Normalizer.fit(tiny_windows)
    x = tiny_windows.x.astype(np.float64)
    count = x.shape[0] * x.shape[2]
    m = Normalizer.from_moments(count, x.sum(axis=(0, 2)), (x**2).sum(axis=(0, 2)))
    np.testing.assert_allclose(n.mean, m.mean, atol=1e-5)
    np.testing.assert_allclose(n.std, m.std, atol=1e-4)


def test_common_labels_align_datasets():
    from fedhar.config import DataConfig
    from fedhar.data.pipeline import load_windows

    cfg = DataConfig(dataset="synthetic", common_labels=True, classes=["walking", "lying"])
    ws = load_windows(cfg, use_cache=False)
    assert ws.label_names == ["walking", "lying"] and set(ws.y.tolist()) == {0, 1}


def test_a_dataset_without_a_common_table_fails():
    from fedhar.data.activities import common_label_map

    with pytest.raises(DataError, match="no common-activity table"):
        common_label_map("generic")
