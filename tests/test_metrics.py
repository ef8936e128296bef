import re

import numpy as np
import pytest

from fedhar.metrics import classification_metrics


def test_metrics_against_hand_computed():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == 4 / 6
    # a: p=1/2 r=1/2 f=.5; b: p=2/3 r=1 f=.8; c: p=1 r=1/2 f=2/3
    assert abs(m["macro_f1"] - np.mean([0.5, 0.8, 2 / 3])) < 1e-12
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_absent_classes_do_not_count():
    m = classification_metrics(np.array([0, 0]), np.array([0, 0]), ["a", "b"])
    assert m["macro_f1"] == 1.0 and "b" not in m["per_class_f1"]


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        ([0, 1, -1], [0, 1, 2], "y_true holds [-1]"),  # the unlabelled marker would wrap to the last class
        ([0, 1, 2], [0, 1, 3], "y_pred holds [3]"),
        ([0, 1], [0.9, 1.2], "integer class indices"),
        ([0, 1], [0], "same length"),
        ([], [], "no windows to score"),
    ],
)
def test_bad_labels_and_empty_input_fail_instead_of_scoring(y_true, y_pred, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        classification_metrics(np.array(y_true, dtype=np.int64), np.array(y_pred), ["a", "b", "c"])
