"""Dataset loaders on synthetic copies of each official layout: detection, units, labels, tags, windows."""

from __future__ import annotations

import importlib
import shutil

import numpy as np
import pytest
from tests.conftest import BASIC6, HAPT, requires_hapt
from tests.fixtures import layouts as L
from tests.fixtures.layouts import EXPECTED_TAGS, SUBJECT_INDEX, WRITERS

from fedhar.config import DataConfig
from fedhar.data.loaders import LOADERS, detect_layout, load_recordings
from fedhar.data.loaders.generic import read_signal_csv
from fedhar.data.pipeline import load_windows
from fedhar.data.recording import UNLABELLED
from fedhar.data.windows import WindowSet
from fedhar.errors import DataError

@pytest.mark.parametrize("name", list(WRITERS))
def test_detects_its_layout_and_no_other_loader_claims_it(layouts, name):
    assert detect_layout(layouts[name]) == name
    claimed = [other for other in LOADERS if importlib.import_module(LOADERS[other]).detect(layouts[name])]
    assert claimed == [name]


@pytest.mark.parametrize("name", list(WRITERS))
def test_values_are_in_canonical_units_and_aligned_with_labels(layouts, name):
    rs = load_recordings(layouts[name])
    assert rs.dataset == name and all(r.dataset == name for r in rs.recordings)
    seen = set()
    for r in rs.recordings:
        s_index = SUBJECT_INDEX[name][r.subject]
        finite = np.isfinite(r.signal).all(axis=1)
        for k in np.unique(r.labels):
            rows = (r.labels == k) & finite
            median = np.median(r.signal[rows, :6], axis=0)
            if k == UNLABELLED:
                np.testing.assert_allclose(median[:3], L.UNLABELLED_ACC, atol=1e-4)
                continue
            np.testing.assert_allclose(median[:3], L.acc_g(k, s_index), atol=1e-4, err_msg=f"{r.source} label {k}")
            np.testing.assert_allclose(median[3:6], L.gyro_rad(k), atol=1e-4, err_msg=f"{r.source} label {k}")
            seen.add(rs.label_names[k])
    assert seen, "no labelled samples"


@pytest.mark.parametrize("name", list(WRITERS))
def test_subject_device_and_placement_tags(layouts, name):
    rs = load_recordings(layouts[name])
    assert rs.subjects() == list(SUBJECT_INDEX[name])
    devices, placements = EXPECTED_TAGS[name]
    summary = rs.summary()
    assert summary["devices"] == devices and summary["placements"] == placements
    assert summary["units"] == {"acc": "g", "gyro": "rad/s"} or name == "pamap2"


@pytest.mark.parametrize("name", list(WRITERS))
def test_windows_through_the_pipeline(layouts, name):
    cfg = DataConfig(dataset=name, path=str(layouts[name]), window=64, overlap=0.5)
    ws = load_windows(cfg)
    assert len(ws) > 0 and ws.sample_rate == 50.0 and ws.x.shape[1:] == (6, 64)
    assert not ws.notes["cache_hit"] and load_windows(cfg).notes["cache_hit"]
    assert set(ws.subject.tolist()) == set(SUBJECT_INDEX[name]) and set(ws.dataset.tolist()) == {name}
    for k in np.unique(ws.y):
        xk = ws.x[ws.y == k]
        subjects = ws.subject[ws.y == k]
        for s in set(subjects.tolist()):
            median = np.median(xk[subjects == s], axis=(0, 2))
            np.testing.assert_allclose(median[:3], L.acc_g(k, SUBJECT_INDEX[name][s]), atol=1e-3)
            np.testing.assert_allclose(median[3:], L.gyro_rad(k), atol=1e-3)


def test_auto_detection_in_the_pipeline(layouts):
    ws = load_windows(DataConfig(dataset="auto", path=str(layouts["motionsense"]), window=64))
    assert set(ws.dataset.tolist()) == {"motionsense"}


# ---- UCI-HAR -----------------------------------------------------------------------------------


def test_uci_har_runs_are_stitched_back_and_give_the_official_windows(layouts):
    rs = load_recordings(layouts["uci_har"])
    runs = [run for split in ("train", "test") for run in L.UCI_RUNS[split]]
    assert len(rs.recordings) == len(runs)  # the two adjacent WALKING runs of subject 1 stay apart
    for r, (subject, k, windows) in zip(rs.recordings, runs):
        np.testing.assert_allclose(r.signal, L.uci_run_signal(subject, k, windows), atol=1e-6)
    assert [r.session for r in rs.recordings][:2] == ["train-0001", "train-0002"]
    ws = load_windows(DataConfig(dataset="uci_har", path=str(layouts["uci_har"]), window=128, overlap=0.5))
    official = np.concatenate(
        [np.stack([L.uci_run_signal(s, k, w)[64 * i : 64 * i + 128].T for i in range(w)]) for s, k, w in runs]
    )
    np.testing.assert_allclose(ws.x, official, atol=1e-6)
    assert ws.y.tolist() == [k for _, k, w in runs for _ in range(w)]


def test_uci_har_accepts_the_dataset_folder_itself(layouts):
    rs = load_recordings(layouts["uci_har"] / "UCI HAR Dataset")
    assert rs.label_names == L.UCI_LABELS and rs.subjects() == ["1", "2", "3"]


# ---- MotionSense -------------------------------------------------------------------------------


def test_motionsense_roots_and_sessions(layouts, tmp_path):
    inner = layouts["motionsense"] / "A_DeviceMotion_data"
    assert detect_layout(inner) == "motionsense"
    nested = tmp_path / "kaggle" / "A_DeviceMotion_data"
    shutil.copytree(inner, nested / "A_DeviceMotion_data")
    rs = load_recordings(tmp_path / "kaggle")
    assert sorted({r.session for r in rs.recordings}) == sorted(L.MS_TRIALS)
    assert rs.label_names == L.MS_LABELS


# ---- HHAR --------------------------------------------------------------------------------------


def test_hhar_gaps_split_and_null_is_unlabelled(layouts):
    rs = load_recordings(layouts["hhar"])
    by_device = {}
    for r in rs.recordings:
        by_device.setdefault((r.subject, r.session.rsplit("-", 1)[0]), []).append(r)
    assert len(by_device) == 4 and all(len(v) == 2 for v in by_device.values())  # the 2 s pause splits
    first = rs.recordings[0]
    assert (first.labels == UNLABELLED).sum() > 30  # the 1 s null stretch (50 Hz grid)
    assert first.sample_rate == 50.0


def test_hhar_placement_option(layouts):
    watches = load_recordings(layouts["hhar"], placement="watch").summary()
    assert watches["devices"] == ["gear"] and watches["placements"] == ["wrist"]
    both = load_recordings(layouts["hhar"], placement="all").summary()
    assert both["devices"] == ["gear", "nexus4", "s3mini"] and both["placements"] == ["waist", "wrist"]


# ---- RealWorld ---------------------------------------------------------------------------------


def test_realworld_variations(layouts):
    rs = load_recordings(layouts["realworld"])
    sessions = {(r.subject, r.session) for r in rs.recordings}
    assert {("2", "climbingdown-1"), ("2", "climbingdown-2")} <= sessions  # zips inside the zip
    assert ("1", "standing-1") in sessions  # `_2` acc paired with the unnumbered gyro file
    assert ("2", "sitting-1") not in sessions  # its gyro zip lacks the waist file ...
    assert any("gyr_sitting_csv.zip" in s and "waist" in s for s in rs.skipped)  # ... and that is reported


def test_realworld_placement_option(layouts):
    chest = load_recordings(layouts["realworld"], placement="chest")
    assert chest.summary()["placements"] == ["chest"]
    assert ("2", "sitting-1") in {(r.subject, r.session) for r in chest.recordings}


# ---- WISDM -------------------------------------------------------------------------------------


def test_wisdm_labels_rate_and_watch(layouts):
    rs = load_recordings(layouts["wisdm"])
    assert rs.label_names == [name for name, _ in L.WISDM_KEY]
    assert {r.session for r in rs.recordings} == {"walking-1", "sitting-1"}
    assert rs.summary()["sample_rates_hz"] == [20.0]
    watch = load_recordings(layouts["wisdm"], placement="wrist").summary()
    assert watch["devices"] == ["lg-g-watch"] and watch["placements"] == ["wrist"]


# ---- PAMAP2 ------------------------------------------------------------------------------------


def test_pamap2_nan_rule(layouts):
    rs = load_recordings(layouts["pamap2"])
    r = rs.recordings[0]
    short_start, short_len = L.PAMAP2_SHORT_NAN
    long_start, long_len = L.PAMAP2_LONG_NAN
    assert np.isfinite(r.signal[short_start : short_start + short_len]).all()  # interpolated
    assert np.isnan(r.signal[long_start : long_start + long_len]).all()  # left for windowing to drop
    assert (~np.isfinite(r.signal).all(axis=1)).sum() == long_len
    cfg = DataConfig(dataset="pamap2", path=str(layouts["pamap2"]), window=64)
    ws, again = load_windows(cfg, use_cache=False), load_windows(cfg)
    assert any("dropped" in s and "NaN" in s for s in ws.notes["skipped"])
    assert np.isfinite(ws.x).all()
    assert load_windows(cfg).notes["cache_hit"] and load_windows(cfg).notes["skipped"] == again.notes["skipped"]


def test_pamap2_placement_optional_and_protocol_root(layouts):
    chest = load_recordings(layouts["pamap2"], placement="chest")
    walking = chest.recordings[0].labels == chest.label_names.index("walking")
    expected = L.acc_g(L.PAMAP2_ALL_IDS.index(4), 0) + np.array([1.0, 1.0, 1.0]) / L.G  # chest IMU written +1 m/s²
    np.testing.assert_allclose(np.median(chest.recordings[0].signal[walking, :3], axis=0), expected, atol=1e-5)
    assert chest.summary()["placements"] == ["chest"]
    with_optional = load_recordings(layouts["pamap2"], optional=True)
    assert {r.session for r in with_optional.recordings} == {"protocol", "optional"}
    protocol_only = load_recordings(layouts["pamap2"] / "PAMAP2_Dataset" / "Protocol")
    assert protocol_only.subjects() == ["101", "102"]


# ---- generic CSV and .npz ----------------------------------------------------------------------


def test_generic_csv_units_and_labels(layouts):
    signal, layout, rate, labels = read_signal_csv(layouts["generic"] / "alice.csv")
    assert rate == 50.0 and layout.channels[0] == "acc_x" and dict(layout.units) == {"acc": "g", "gyro": "rad/s"}
    np.testing.assert_allclose(signal[0], np.concatenate([L.acc_g(0, 0), L.gyro_rad(0)]), atol=1e-5)
    assert labels[0] == "sit" and labels[220] == "" and labels[-1] == "walk"


def test_read_signal_csv_needs_no_label_and_resamples_jitter(tmp_path):
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.015, 0.025, 400))
    t[200:] += 3.0  # a 3 s hole in the recording
    rows = "\n".join(f"{ti:.4f},{np.sin(ti):.6f},0,1,0,0,0" for ti in t)
    path = tmp_path / "raw.csv"
    path.write_text("timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n" + rows + "\n")
    signal, layout, rate, labels = read_signal_csv(path, sample_rate=50)
    assert labels is None and rate == 50.0 and layout.num_channels == 6
    grid = t[0] + np.arange(len(signal)) / 50.0  # the grid starts at the first sample
    valid = np.isfinite(signal).all(axis=1)
    assert (~valid).sum() > 100  # the hole is NaN, not bridged
    np.testing.assert_allclose(signal[valid, 0], np.sin(grid[valid]), atol=2e-3)


def test_generic_subject_column_and_label_table(tmp_path):
    folder = tmp_path / "csvs"
    folder.mkdir()
    lines = ["time_ms,subject,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"]
    lines += [f"{i * 20},{'s1' if i < 200 else 's2'},1,0,0,0,0,0,{'b' if i % 200 < 150 else 'a'}" for i in range(400)]
    (folder / "both.csv").write_text("\n".join(lines) + "\n")
    (folder / "labels.txt").write_text("b\na\nc\n")
    rs = load_recordings(folder, placement="wrist", device="watch")
    assert rs.label_names == ["b", "a", "c"]
    assert rs.subjects() == ["s1", "s2"] and [r.session for r in rs.recordings] == ["both#0", "both#1"]
    assert rs.summary()["placements"] == ["wrist"] and rs.summary()["devices"] == ["watch"]
    assert rs.recordings[0].labels[0] == 0 and rs.recordings[0].labels[199] == 1


def test_npz_round_trips_through_the_pipeline(tmp_path):
    path = L.write_npz(tmp_path / "w.npz", n=12, length=64)
    original = WindowSet.load(path)
    assert detect_layout(path) == "generic"
    rs = load_recordings(path)
    assert len(rs.recordings) == 12 and rs.label_names == ["rest", "move"]
    ws = load_windows(DataConfig(dataset="auto", path=str(path), window=64, overlap=0.5))
    np.testing.assert_array_equal(ws.x, original.x)
    assert ws.y.tolist() == original.y.tolist() and ws.subject.tolist() == original.subject.tolist()
    assert ws.session.tolist() == original.session.tolist()


def test_recordings_shorter_than_a_window_are_reported(tmp_path):
    path = L.write_npz(tmp_path / "w.npz", n=4, length=32)
    with pytest.raises(DataError, match="no 64-sample window"):
        load_windows(DataConfig(dataset="generic", path=str(path), window=64))
    ws_path = tmp_path / "mixed"
    ws_path.mkdir()
    header = "timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label\n"
    (ws_path / "long.csv").write_text(header + "".join(f"{i / 50},1,0,0,0,0,0,x\n" for i in range(200)))
    (ws_path / "short.csv").write_text(header + "".join(f"{i / 50},1,0,0,0,0,0,x\n" for i in range(20)))
    ws = load_windows(DataConfig(dataset="generic", path=str(ws_path), window=64))
    assert any("1 recordings shorter than one 64-sample window" in s and "short.csv" in s for s in ws.notes["skipped"])


# ---- the real HAPT copy ------------------------------------------------------------------------


@requires_hapt
def test_real_hapt_windows_per_class(tmp_path):
    """128-sample windows, 50 % overlap, 6 basic activities of the 21 UCI-HAR training subjects."""
    cfg = DataConfig(dataset="hapt", path=str(HAPT), window=128, overlap=0.5, classes=BASIC6)
    ws = load_windows(cfg, use_cache=False)
    counts = dict(zip(ws.label_names, ws.class_counts().tolist()))
    # regression figures of this copy (fixed data): a change means windowing or the loader changed
    assert counts == {
        "WALKING": 1186, "WALKING_UPSTAIRS": 1019, "WALKING_DOWNSTAIRS": 923,
        "SITTING": 1252, "STANDING": 1385, "LAYING": 1378,
    }  # fmt: skip
    assert len(set(ws.subject.tolist())) == 21 and ws.notes["skipped"] == []
    walking = ws.x[ws.y == 0]
    assert 0.9 < np.median(np.linalg.norm(walking[:, :3], axis=1)) < 1.1  # acc in g
