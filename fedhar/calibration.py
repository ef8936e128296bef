"""Per-client calibration of a confused class pair from the client's own unlabelled windows.

On HAPT every error of the default model is SITTING <-> STANDING, and the errors come in whole
subjects: one person's sitting looks like other people's standing in every cue a waist window
carries, but within one person the two postures still separate. A client holds many unlabelled
windows of its one wearer, so it can place that boundary itself: project the windows the model
assigns to the pair onto a direction fitted once on labelled training subjects, and split the
client's own projections where they separate (Otsu's threshold). No labels and no data leave the
client. It assumes the client holds windows of both classes; a split that would leave one side
almost empty is refused.
"""

from __future__ import annotations

import numpy as np


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """The cut that maximises the between-class variance of a 1-D histogram (Otsu 1979).

    Every cut inside an empty stretch between two clusters scores the same; the middle of that
    stretch is taken, the widest margin to both clusters.
    """
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    between = np.zeros(bins + 1)
    for i in range(1, bins):
        w0, w1 = counts[:i].sum(), counts[i:].sum()
        if w0 and w1:
            m0, m1 = (counts[:i] * centres[:i]).sum() / w0, (counts[i:] * centres[i:]).sum() / w1
            between[i] = w0 * w1 * (m0 - m1) ** 2
    best = np.flatnonzero(np.isclose(between, between.max()))
    return float((edges[best[0]] + edges[best[-1]]) / 2)


def fisher_direction(cues: np.ndarray, is_second: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """Fisher's discriminant direction between two classes of cue vectors (pointing to the second)."""
    a, b = cues[~is_second], cues[is_second]
    if len(a) < 2 or len(b) < 2:
        raise ValueError("fitting the direction needs at least two windows of each class of the pair")
    scatter = np.cov(a.T) + np.cov(b.T) + ridge * np.eye(cues.shape[1])
    return np.linalg.solve(scatter, b.mean(0) - a.mean(0))


def split_per_subject(pred: np.ndarray, cues: np.ndarray, subject: np.ndarray, direction: np.ndarray,
                      first: int, second: int, min_share: float = 0.2) -> tuple[np.ndarray, dict]:
    """The model's labels with each subject's pair windows re-split at Otsu's threshold of its own projections.

    The split is only applied where both the model and the split give each side at least
    ``min_share`` of the subject's pair windows: a client that holds one posture only (which the
    projections alone cannot tell) keeps the model's labels as long as the model sees it so.
    """
    if not 0 <= min_share < 0.5:
        raise ValueError(f"min_share must be in [0, 0.5), got {min_share}")
    out, report = pred.copy(), {}
    for s in np.unique(subject):
        rows = np.flatnonzero((subject == s) & np.isin(pred, [first, second]))
        if len(rows) < 2:
            report[str(s)] = {"pair_windows": int(len(rows)), "applied": False}
            continue
        score = cues[rows] @ direction
        to_second = score > otsu_threshold(score)
        model_share, split_share = float((pred[rows] == second).mean()), float(to_second.mean())
        applied = min(model_share, 1 - model_share) >= min_share and min(split_share, 1 - split_share) >= min_share
        if applied:
            out[rows] = np.where(to_second, second, first)
        report[str(s)] = {"pair_windows": int(len(rows)), "model_share_second": round(model_share, 3),
                          "split_share_second": round(split_share, 3), "applied": applied,
                          "changed": int((out[rows] != pred[rows]).sum())}  # fmt: skip
    return out, report
