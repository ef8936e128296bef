"""The boundary-shift analysis: a bias that fixes a misplaced boundary is found; the summary picks shifts by role."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
from boundary_shift import group_means, shift_curve, summarize  # noqa: E402

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
