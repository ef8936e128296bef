"""Continual metrics on small hand-computed matrices, their edge cases, and the two plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedhar.continual.metrics import continual_metrics, per_class_forgetting, worst_subject
from fedhar.continual.plots import plot_accuracy_matrix, plot_domain_curves

# R[i][j]: after stage i, on domain j
R3 = [
    [0.80, 0.30, 0.20],
    [0.60, 0.90, 0.40],
    [0.50, 0.70, 0.85],
]
B3 = [0.10, 0.20, 0.15]  # the untrained model on each domain


def test_three_stages_by_hand():
    m = continual_metrics(R3, B3)
    # average after stage: [0.8], [(0.6 + 0.9) / 2], [(0.5 + 0.7 + 0.85) / 3]
    assert m["average_after_stage"] == pytest.approx([0.80, 0.75, 2.05 / 3])
    assert m["final_average"] == pytest.approx(2.05 / 3)
    # forgetting: j=0: max(0.8, 0.6) - 0.5 = 0.3; j=1: max(0.3, 0.9) - 0.7 = 0.2
    assert m["forgetting_per_domain"] == pytest.approx([0.30, 0.20])
    assert m["forgetting"] == pytest.approx(0.25)
    assert m["max_forgetting"] == pytest.approx(0.30)
    # BWT: ((0.5 - 0.8) + (0.7 - 0.9)) / 2
    assert m["bwt"] == pytest.approx(-0.25)
    # FWT: ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.3 - 0.2) + (0.4 - 0.15)) / 2
    assert m["fwt"] == pytest.approx(0.175)
    # learning accuracy: (0.8 + 0.9 + 0.85) / 3
    assert m["learning_accuracy"] == pytest.approx(0.85)


def test_forgetting_uses_best_earlier_score_not_the_diagonal():
    R = [
        [0.50, 0.10, 0.00],
        [0.70, 0.60, 0.20],  # domain 0 improved after stage 1 (positive backward transfer) ...
        [0.60, 0.60, 0.90],  # ... then dropped
    ]
    m = continual_metrics(np.asarray(R))
    # forgetting: j=0: max(0.5, 0.7) - 0.6 = 0.1; j=1: max(0.1, 0.6) - 0.6 = 0.0
    assert m["forgetting_per_domain"] == pytest.approx([0.10, 0.00])
    assert m["forgetting"] == pytest.approx(0.05)
    assert m["max_forgetting"] == pytest.approx(0.10)
    # BWT: ((0.6 - 0.5) + (0.6 - 0.6)) / 2 = +0.05, although domain 0 lost 0.1 from its best
    assert m["bwt"] == pytest.approx(0.05)
    assert m["fwt"] is None  # no untrained baseline
    assert m["learning_accuracy"] == pytest.approx((0.5 + 0.6 + 0.9) / 3)


def test_two_stages_and_json_ready():
    m = continual_metrics([[0.9, 0.4], [0.7, 0.8]], [0.3, 0.5])
    assert m["average_after_stage"] == pytest.approx([0.9, 0.75])
    assert m["forgetting_per_domain"] == pytest.approx([0.2])
    assert m["bwt"] == pytest.approx(-0.2)
    assert m["fwt"] == pytest.approx(-0.1)  # R[0][1] - b1 = 0.4 - 0.5: stage 0 hurt domain 1
    for key in ("final_average", "forgetting", "max_forgetting", "bwt", "fwt", "learning_accuracy"):
        assert type(m[key]) is float
    assert all(type(v) is float for v in m["average_after_stage"] + m["forgetting_per_domain"])
    assert json.loads(json.dumps(m)) == m


def test_single_stage():
    m = continual_metrics([[0.7]], initial=[0.2])
    assert m["average_after_stage"] == pytest.approx([0.7])
    assert m["final_average"] == pytest.approx(0.7)
    assert m["learning_accuracy"] == pytest.approx(0.7)
    assert m["forgetting_per_domain"] == []
    for key in ("forgetting", "max_forgetting", "bwt", "fwt"):
        assert m[key] is None
    json.dumps(m)


def test_nan_cell_is_named():
    R = [row[:] for row in R3]
    R[1][2] = math.nan
    with pytest.raises(ValueError, match=r"R\[1\]\[2\]"):
        continual_metrics(R)


BAD_SHAPES = [[[0.1, 0.2]], [0.1, 0.2], [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [], np.zeros((2, 2, 2))]


@pytest.mark.parametrize("bad", BAD_SHAPES)
def test_shape_errors(bad):
    with pytest.raises(ValueError, match="square"):
        continual_metrics(bad)


def test_initial_errors():
    with pytest.raises(ValueError, match="one score per domain"):
        continual_metrics(R3, [0.1, 0.2])
    with pytest.raises(ValueError, match=r"initial\[1\]"):
        continual_metrics(R3, [0.1, math.nan, 0.2])


def test_per_class_forgetting_skips_absent_classes():
    nan = math.nan
    classes = ["WALKING", "LAYING", "STANDING"]
    # per_class[i][j][c]; LAYING has no windows in domain 0, STANDING only in domain 2 (the last)
    pc = np.array(
        [
            [[0.9, nan, nan], [nan, 0.3, nan], [0.1, 0.0, 0.2]],
            [[0.7, nan, nan], [0.8, 0.9, nan], [0.2, 0.1, 0.3]],
            [[0.4, nan, nan], [0.6, 0.5, nan], [0.9, 0.8, 0.7]],
        ]
    )
    out = per_class_forgetting(pc, classes)
    assert list(out) == classes
    # WALKING: domain 0: max(0.9, 0.7) - 0.4 = 0.5; domain 1: max(NaN, 0.8) - 0.6 = 0.2; mean 0.35
    assert out["WALKING"] == pytest.approx(0.35)
    # LAYING: domain 0 absent (not a zero); domain 1: max(0.3, 0.9) - 0.5 = 0.4
    assert out["LAYING"] == pytest.approx(0.4)
    # STANDING: in no earlier domain
    assert out["STANDING"] is None
    json.dumps(out)


def test_per_class_forgetting_errors_and_single_stage():
    with pytest.raises(ValueError, match="class names"):
        per_class_forgetting(np.zeros((2, 2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match=r"\[T, T, C\]"):
        per_class_forgetting(np.zeros((2, 3, 1)), ["a"])
    assert per_class_forgetting(np.ones((1, 1, 2)), ["a", "b"]) == {"a": None, "b": None}


def test_worst_subject():
    assert worst_subject({"s1": 0.8, "s2": 0.4, "s3": 0.6}) == ("s2", pytest.approx(0.4))
    subject, score = worst_subject({"only": 0.9})
    assert (subject, score) == ("only", 0.9) and type(score) is float
    with pytest.raises(ValueError):
        worst_subject({})


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_accuracy_matrix(tmp_path):
    domains = ["waist", "wrist", "pocket"]
    out = plot_accuracy_matrix(
        {"test macro-F1": R3, "test accuracy": [[0.9, 0.4, 0.3], [0.7, 0.95, 0.5]]},  # a run stopped after stage 1
        domains,
        tmp_path / "sub" / "accuracy_matrix.png",
        "demo: fedavg",
    )
    assert out == tmp_path / "sub" / "accuracy_matrix.png"
    assert _is_png(out)


def test_plot_domain_curves(tmp_path):
    rounds = [1, 2, 3, 4, 5, 6]
    scores = {"waist": [0.3, 0.6, 0.7, 0.5, 0.4, 0.45], "wrist": [None, 0.2, 0.3, 0.6, 0.8, 0.85]}
    out = plot_domain_curves(rounds, scores, [2.5, 4.5], str(tmp_path / "curves.png"), "demo", ylabel="val macro-F1")
    assert out == tmp_path / "curves.png"
    assert _is_png(out)
