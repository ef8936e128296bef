"""Classification metrics HAR papers report: accuracy, macro-F1, per-class F1, confusion matrix."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class.

    Labels must be class indices in ``[0, num_classes)``: an unlabelled marker (-1) or a float
    prediction would otherwise be counted silently (numpy wraps -1 to the last class)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D arrays of the same length")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if len(y) and not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
        bad = y[(y < 0) | (y >= num_classes)] if len(y) else y
        if len(bad):
            raise ValueError(f"{name} holds {sorted(set(bad.tolist()))[:5]}, outside the class indices "
                             f"0..{num_classes - 1}; drop unlabelled windows before scoring")  # fmt: skip
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict:
    """Macro-F1 averages over the classes present in ``y_true`` or ``y_pred`` (as scikit-learn does).

    No windows is an error, not a score of 0: an empty split or subject filter must be noticed."""
    k = len(label_names)
    cm = confusion_matrix(y_true, y_pred, k)
    if not cm.sum():
        raise ValueError("no windows to score: the split, subject filter or label mapping left none")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(f1[present].mean()),
        "per_class_f1": {name: float(v) for name, v, p in zip(label_names, f1, present) if p},
        "support": {name: int(s) for name, s in zip(label_names, support)},
        "confusion_matrix": cm.tolist(),
        "num_windows": n,
    }
