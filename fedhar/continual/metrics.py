"""Continual-learning metrics on the accuracy matrix R[i][j]: after stage i, on domain j.

Definitions follow Lopez-Paz & Ranzato (GEM, 2017: average, BWT, FWT) and Chaudhry et al. (2018,
"Riemannian walk": forgetting as the best earlier score minus the final one). Stages and domains are
indexed 0..T-1; domain j is the data of stage j. Every domain is scored after every stage, seen or not,
so the upper triangle (domains not yet seen) is there too: FWT reads it.
"""

from __future__ import annotations

import numpy as np


def _matrix(R) -> np.ndarray:
    """R as a finite square float matrix; a NaN would silently poison every mean, so it is an error."""
    a = np.asarray(R, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"R must be a non-empty square [T, T] matrix (after stage i, on domain j); got {a.shape}")
    bad = np.argwhere(~np.isfinite(a))
    if bad.size:
        i, j = (int(x) for x in bad[0])
        raise ValueError(f"R[{i}][{j}] is {a[i, j]}: every domain must be scored after every stage")
    return a


def continual_metrics(R, initial=None) -> dict:
    """Average, forgetting, BWT, FWT and learning accuracy of one accuracy matrix, as a JSON-ready dict.

    ``initial`` is the untrained model's score on each domain (GEM's b_j); without it FWT is undefined,
    since the gain from earlier stages needs a baseline that saw nothing. Metrics that compare stages are
    None for a single stage.
    """
    a = _matrix(R)
    T = a.shape[0]
    b = None
    if initial is not None:
        b = np.asarray(initial, dtype=float)
        if b.shape != (T,):
            raise ValueError(f"initial must hold one score per domain ({T}); got shape {b.shape}")
        if not np.all(np.isfinite(b)):
            j = int(np.argwhere(~np.isfinite(b))[0][0])
            raise ValueError(f"initial[{j}] is {b[j]}: the untrained model must be scored on every domain")
    diag = np.diag(a)
    out: dict = {
        "average_after_stage": [float(a[i, : i + 1].mean()) for i in range(T)],
        "final_average": float(a[T - 1].mean()),
        "forgetting_per_domain": [],
        "forgetting": None,
        "max_forgetting": None,
        "bwt": None,
        "fwt": None,
        "learning_accuracy": float(diag.mean()),
    }
    if T == 1:
        return out
    # best score on domain j after any stage before the last, minus the final score (Chaudhry et al.)
    per_domain = a[: T - 1, : T - 1].max(axis=0) - a[T - 1, : T - 1]
    out["forgetting_per_domain"] = [float(f) for f in per_domain]
    out["forgetting"] = float(per_domain.mean())
    out["max_forgetting"] = float(per_domain.max())
    out["bwt"] = float(np.mean(a[T - 1, : T - 1] - diag[: T - 1]))
    if b is not None:
        # R[j-1][j]: domain j scored just before it is learned, against the untrained model
        out["fwt"] = float(np.mean([a[j - 1, j] - b[j] for j in range(1, T)]))
    return out


def per_class_forgetting(per_class, classes) -> dict[str, float | None]:
    """Forgetting of each class, averaged over the earlier domains that hold it.

    An average over classes hides a class the model lost (e.g. one activity that only an earlier
    placement showed); NaN marks a class with no windows in a domain, and such cells are skipped rather
    than counted as zero.
    """
    a = np.asarray(per_class, dtype=float)
    names = [str(c) for c in classes]
    if a.ndim != 3 or a.shape[0] != a.shape[1]:
        raise ValueError(f"per_class must be [T, T, C] (after stage i, on domain j, class c); got shape {a.shape}")
    if a.shape[2] != len(names):
        raise ValueError(f"per_class has {a.shape[2]} classes but {len(names)} class names were given")
    T = a.shape[0]
    out: dict[str, float | None] = {}
    for c, name in enumerate(names):
        drops = []
        for j in range(T - 1):
            final = a[T - 1, j, c]
            earlier = a[: T - 1, j, c]
            if np.isnan(final) or np.all(np.isnan(earlier)):
                continue
            drops.append(float(np.nanmax(earlier) - final))
        out[name] = float(np.mean(drops)) if drops else None
    return out


def worst_subject(scores_by_subject: dict[str, float]) -> tuple[str, float]:
    """The subject the model serves worst: a good average can hide one user it fails."""
    if not scores_by_subject:
        raise ValueError("worst_subject needs at least one subject's score")
    subject = min(scores_by_subject, key=lambda s: scores_by_subject[s])
    return subject, float(scores_by_subject[subject])
