"""The boundary-shift analysis: a bias that fixes a misplaced boundary is found; the summary picks shifts by role."""

import sys
from pathlib import Path

import numpy as np
import pytest

from fedhar.calibration import otsu_threshold

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
from boundary_shift import (  # noqa: E402
    group_means,
    per_subject_oracle,
    per_subject_unsupervised,
    shift_curve,
    summarize,
)

NAMES = ["SITTING", "STANDING", "LAYING"]


def _misplaced_boundary():
    """Standing windows whose STANDING logit is 1.0 too low: a +1.5 shift fixes them all."""
    y = np.array([0, 0, 1, 1, 2])
    logits = np.array([[2.0, 0.0, 0], [2.0, 0.5, 0], [1.0, 0.0, 0], [1.0, 0.2, 0], [0, 0, 3.0]])
    return logits, y


def test_shift_curve_finds_the_bias_that_fixes_a_misplaced_boundary():
    logits, y = _misplaced_boundary()
    shifts = np.array([-1.0, 0.0, 1.5, 3.0])
    curve = shift_curve(logits, y, NAMES, "STANDING", shifts)
    assert curve[1] < 1.0  # as trained, both standing windows read as sitting
    assert curve[2] == 1.0  # +1.5 separates the pair
    assert curve[3] < 1.0  # too far: sitting windows flip to standing


def test_summary_reports_test_at_the_validation_choice_not_the_oracle():
    shifts = np.array([-1.0, 0.0, 1.0])
    val, test = np.array([0.90, 0.92, 0.95]), np.array([0.97, 0.93, 0.91])
    s = summarize(val, test, shifts)
    assert s["test_as_trained"] == 0.93 and s["val_chosen_shift"] == 1.0
    assert s["test_at_val_chosen_shift"] == 0.91  # what a validation recalibration would have scored
    assert s["oracle_shift"] == -1.0 and s["test_oracle_ceiling"] == 0.97


def test_group_means_pool_seeds_and_folds_of_one_candidate():
    rows = [{"run": "base-s0", "x": 1.0}, {"run": "base-s1", "x": 3.0}, {"run": "cues-s0-f1", "x": 5.0}]
    assert group_means(rows) == {"base": {"runs": 2, "x": 2.0}, "cues": {"runs": 1, "x": 5.0}}


def test_per_subject_oracle_fixes_opposite_biases_that_no_global_shift_can():
    # subject a's standing reads as sitting (needs +1.5), subject b's sitting as standing (needs -1.5)
    logits = np.array([[2.0, 1.0, 0], [0.0, 2.0, 0], [2.0, 0.0, 0], [1.0, 2.0, 0]])
    y, subject = np.array([1, 1, 0, 0]), np.array(["a", "a", "b", "b"])
    assert max(shift_curve(logits, y, NAMES, "STANDING")) < 1.0
    assert per_subject_oracle(logits, y, subject, NAMES, "STANDING") == 1.0


def test_unsupervised_threshold_splits_a_subjects_two_clusters_without_labels():
    rng = np.random.default_rng(0)
    gap = np.r_[rng.normal(2.0, 0.3, 20), rng.normal(6.0, 0.3, 20)]  # all read as standing, two clusters
    logits = np.c_[np.zeros(40), gap, np.full(40, -9.0)]
    assert otsu_threshold(gap) == pytest.approx(4.0, abs=0.5)
    predicted = per_subject_unsupervised(logits, np.full(40, "a"), NAMES, "STANDING", "SITTING")
    assert (predicted[:20] == 0).all() and (predicted[20:] == 1).all()
    lone = per_subject_unsupervised(logits[:1], np.array(["b"]), NAMES, "STANDING", "SITTING")
    assert np.array_equal(lone, [1])  # one window: nothing to split, left as trained


def test_unsupervised_threshold_leaves_windows_outside_the_pair_alone():
    """A negative threshold moves the boundary towards STANDING inside the pair only: a LAYING window whose
    STANDING logit is its runner-up keeps LAYING."""
    gap = np.r_[np.full(10, -6.0), np.full(10, -2.0)]  # all read as sitting, two clusters: threshold near -4
    logits = np.c_[np.zeros(20), gap, np.full(20, -9.0)]
    laying = np.array([[-9.0, 2.5, 3.0]])  # STANDING 0.5 below LAYING: a global -4 shift would flip it
    predicted = per_subject_unsupervised(np.r_[logits, laying], np.full(21, "a"), NAMES, "STANDING", "SITTING")
    assert (predicted[:10] == 0).all() and (predicted[10:20] == 1).all() and predicted[20] == 2


def test_ties_pick_the_smallest_shift():
    """A flat maximum (the model already optimal over a range) keeps the shift nearest zero, for the
    validation choice and for the oracle alike."""
    shifts = np.array([-2.0, -1.0, 0.0, 1.0])
    val, test = np.array([0.95, 0.95, 0.95, 0.90]), np.array([0.90, 0.97, 0.97, 0.97])
    s = summarize(val, test, shifts)
    assert s["val_chosen_shift"] == 0.0 and s["oracle_shift"] == 0.0


def test_recipe_scores_each_run_on_its_own_split(posture_run, tmp_path, monkeypatch):
    import json

    import boundary_shift

    monkeypatch.setattr("sys.argv", ["boundary_shift.py", str(posture_run), "--out", str(tmp_path / "out")])
    boundary_shift.main()
    record = json.loads((tmp_path / "out" / "boundary_shift.json").read_text())
    row = record["per_run"][0]
    assert row["val_subjects"] == "3" and row["test_subjects"] == "4"
    assert row["test_oracle_ceiling"] >= row["test_as_trained"]  # the sweep includes no shift at all
    assert all(0 <= row[k] <= 1 for k in ("test_per_subject_oracle", "val_per_subject_unsupervised"))
    assert record["mean_per_candidate"]["base"]["runs"] == 1
    assert (tmp_path / "out" / "boundary_shift.png").is_file() and (tmp_path / "out" / "boundary_shift.csv").is_file()
    assert record["command"].startswith("boundary_shift.py") and record["git"] and record["cwd"]


def test_recipe_takes_overrides_after_the_runs(posture_run, tmp_path, monkeypatch, capsys):
    """Data moved since training: `--set data.path=...` reaches every run's config (a positional list after
    the runs never could); without it the error names the missing path and that fix."""
    import json

    import boundary_shift

    moved = tmp_path / "moved.npz"
    (tmp_path / "w.npz").rename(moved)
    monkeypatch.setattr("sys.argv", ["boundary_shift.py", str(posture_run), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="does not exist.*--set data.path="):
        boundary_shift.main()
    monkeypatch.setattr("sys.argv", ["boundary_shift.py", str(posture_run), "--out", str(tmp_path / "out"),
                                     "--set", f"data.path={moved}"])  # fmt: skip
    boundary_shift.main()
    record = json.loads((tmp_path / "out" / "boundary_shift.json").read_text())
    assert record["overrides"] == [f"data.path={moved}"] and record["per_run"][0]["test_subjects"] == "4"
