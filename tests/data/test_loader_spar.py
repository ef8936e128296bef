"""The SPAR smartwatch loader: detection, both wrists in one go, narrowing by placement, labels, units, errors."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import REPO
from tests.fixtures import layouts as L
from tests.fixtures.layouts import SPAR_LABELS, WRITERS, write_spar

from fedhar.config import DataConfig
from fedhar.data.loaders import LOADERS, detect_layout, load_recordings
from fedhar.data.loaders import spar as spar_loader
from fedhar.data.pipeline import load_windows
from fedhar.errors import DataError

SPAR = REPO.parent / "shared" / "data" / "spar-watch"


@pytest.fixture
def spar(tmp_path) -> Path:
    return write_spar(tmp_path / "spar-watch", subjects=("01", "02", "03"))


def test_registered_before_generic():
    names = list(LOADERS)
    assert names[-1] == "generic" and names.index("spar") == len(names) - 2


def test_detects_the_layout_and_auto_detection_picks_spar(spar):
    assert spar_loader.detect(spar)
    assert detect_layout(spar) == "spar"
    claimed = [n for n in LOADERS if importlib.import_module(LOADERS[n]).detect(spar)]
    assert claimed == ["spar", "generic"]  # generic reads any CSV folder; spar comes first
    # one side alone is a SPAR folder too
    left = write_spar(spar.parent / "left-only", sides=("left_wrist",))
    assert detect_layout(left) == "spar"


def test_not_detected_without_the_layout(tmp_path, spar):
    assert not spar_loader.detect(tmp_path / "missing")
    assert not spar_loader.detect(spar / "left_wrist")  # a side's folder is not the dataset's top
    assert not spar_loader.detect(spar / "left_wrist" / "01" / "PEN.csv")
    other = tmp_path / "other"
    (other / "left_wrist" / "01").mkdir(parents=True)
    (other / "left_wrist" / "01" / "a.csv").write_text("time,x,y,z\n0,1,2,3\n")  # not SPAR's columns
    assert not spar_loader.detect(other)
    flat = tmp_path / "flat" / "left_wrist"  # CSVs straight in the side folder: no subject folders
    flat.mkdir(parents=True)
    (flat / "PEN.csv").write_text((spar / "left_wrist" / "01" / "PEN.csv").read_text())
    assert not spar_loader.detect(flat.parent)


def test_no_other_fixture_layout_is_taken_for_spar(tmp_path):
    for name, write in WRITERS.items():
        path = write(tmp_path / name)
        assert not spar_loader.detect(path), name
        assert detect_layout(path) == name


def test_loads_both_wrists_tagged_with_labels_in_order_and_canonical_units(spar):
    rs = load_recordings(spar)
    assert rs.dataset == "spar" and rs.label_names == SPAR_LABELS == spar_loader.LABELS
    assert len(rs.recordings) == 2 * 3 * 7
    summary = rs.summary()
    assert summary["placements"] == ["left_wrist", "right_wrist"] and summary["devices"] == ["apple-watch"]
    assert summary["subjects"] == ["01", "02", "03"] and summary["sample_rates_hz"] == [50.0]
    assert summary["units"] == {"acc": "g", "gyro": "rad/s"}
    for rec in rs.recordings:
        side, subject, exercise = rec.session.split("/")
        assert (rec.dataset, rec.device, rec.placement, rec.subject) == ("spar", "apple-watch", side, subject)
        assert Path(rec.source) == spar / side / subject / f"{exercise}.csv"
        k = SPAR_LABELS.index(exercise)
        assert (rec.labels == k).all()  # labelled throughout, by the label table's order
        mirror = np.array([1, -1, 1, -1, 1, -1]) if side == "right_wrist" else np.ones(6)
        want = np.concatenate([L.acc_g(k, int(subject) - 1), L.gyro_rad(k)]) * mirror
        np.testing.assert_allclose(rec.signal[0], want, atol=1e-6)
    sides = {(r.placement, r.subject) for r in rs.recordings}
    assert len(sides) == 6


def test_placement_narrows_to_one_side(spar):
    for option, side in (("left_wrist", "left_wrist"), ("left", "left_wrist"), ("right_wrist", "right_wrist"),
                         ("Right", "right_wrist")):  # fmt: skip
        rs = load_recordings(spar, placement=option)
        assert {r.placement for r in rs.recordings} == {side}, option
        assert len(rs.recordings) == 3 * 7 and rs.label_names == SPAR_LABELS
        assert all(Path(r.source).is_relative_to(spar / side) for r in rs.recordings)
    assert len(load_recordings(spar, placement="all").recordings) == 2 * 3 * 7
    # through the pipeline: data.placement
    ws = load_windows(DataConfig(dataset="spar", path=str(spar), placement="right_wrist", window=32), use_cache=False)
    assert set(ws.placement) == {"right_wrist"} and set(ws.device) == {"apple-watch"}


def test_an_unknown_placement_names_the_ones_the_data_has(spar, tmp_path):
    with pytest.raises(DataError, match=r"SPAR has no placement `ankle`; set `data.placement` to one of "
                                        r"\['all', 'left', 'left_wrist', 'right', 'right_wrist'\]"):  # fmt: skip
        load_recordings(spar, placement="ankle")
    left = write_spar(tmp_path / "left-only", sides=("left_wrist",))
    with pytest.raises(DataError, match=r"no placement `right_wrist`; set `data.placement` to one of "
                                        r"\['all', 'left', 'left_wrist'\]"):  # fmt: skip
        load_recordings(left, "spar", placement="right_wrist")
    assert {r.placement for r in load_recordings(left).recordings} == {"left_wrist"}


def test_label_table_and_layout_errors(tmp_path):
    # without labels.txt: the published order
    bare = write_spar(tmp_path / "bare", subjects=("01",), exercises=["ROW", "PEN"], labels_txt=False)
    rs = load_recordings(bare, "spar")
    assert rs.label_names == SPAR_LABELS
    assert sorted({SPAR_LABELS[int(r.labels[0])] for r in rs.recordings}) == ["PEN", "ROW"]
    # a label outside the table fails by file (the generic reader's check)
    bad = write_spar(tmp_path / "bad", subjects=("01",), exercises=["PEN"])
    path = bad / "right_wrist" / "01" / "PEN.csv"
    path.write_text(path.read_text().replace(",PEN\n", ",SWIM\n"))
    with pytest.raises(DataError, match=r"PEN\.csv.*SWIM"):
        load_recordings(bad, "spar")
    # a file outside a subject folder
    stray = write_spar(tmp_path / "stray", subjects=("01",), exercises=["PEN"])
    (stray / "left_wrist" / "PEN.csv").write_text((stray / "left_wrist" / "01" / "PEN.csv").read_text())
    with pytest.raises(DataError, match=r"left_wrist/<subject>/<EXERCISE>\.csv"):
        load_recordings(stray, "spar")
    # not a SPAR folder, named explicitly
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no left_wrist/<subject>/<EXERCISE>.csv"):
        load_recordings(tmp_path / "empty", "spar")


@pytest.mark.skipif(not (SPAR / "labels.txt").is_file(), reason=f"the SPAR watch data is not at {SPAR}")
def test_the_real_spar_folder_loads_both_wrists_of_7_subjects_and_7_exercises():
    assert detect_layout(SPAR) == "spar"
    ws = load_windows(DataConfig(dataset="spar", path=str(SPAR), sample_rate=50, window=128), use_cache=False)
    assert ws.label_names == SPAR_LABELS and ws.sample_rate == 50.0 and ws.x.shape[1:] == (6, 128)
    assert set(ws.dataset) == {"spar"} and set(ws.device) == {"apple-watch"}
    subjects = [f"{i:02d}" for i in range(1, 8)]
    for side in ("left_wrist", "right_wrist"):
        part = ws.where(placement=side)
        assert sorted(set(part.subject)) == subjects
        for subject in subjects:
            assert (part.where(subject=subject).class_counts() > 0).all(), (side, subject)
    # the units are g and rad/s: about 1 g of gravity at the wrist, gyro well inside a watch's range
    acc = np.linalg.norm(ws.x[:, :3], axis=1)
    assert 0.8 < np.median(acc) < 1.2 and np.abs(ws.x[:, 3:]).max() < 35
