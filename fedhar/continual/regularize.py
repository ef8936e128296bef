"""Regularisation against forgetting: ``l2`` and ``ewc`` (``continual.method``).

Both add ``λ/2 · Σ_i F_i (w_i − w*_i)²`` to a client's local loss, where ``w*`` are the global trainable
tensors at the end of the previous stage (the *anchor*) and ``λ = continual.reg_strength``:

* ``l2``: ``F = 1`` -- every trainable value is pulled back alike;
* ``ewc`` (Kirkpatrick et al. 2017): ``F`` is a diagonal Fisher estimate of how much each value mattered to
  the earlier stages. In a federation no party holds the earlier data, so it is estimated federatedly: in
  the last round of every stage each sampled client computes, before training, the empirical Fisher of the
  received global model on (at most ``continual.fisher_windows`` of) its own windows and sends it with its
  update; the server averages the clients' estimates weighted by their window counts, adds the new stage's
  estimate to the running sum of the earlier ones (online EWC without decay), and normalises the sum to mean
  1 so ``λ`` means the same as for ``l2``.

The anchor (and F) travel to the clients with every train message of the later stages: these methods cost
downlink bytes (reported per stage in ``continual.json``); the per-sample Fisher is approximated with
gradients of micro-batches of ``FISHER_BATCH`` windows (``n_b · g_b²`` summed over micro-batches), which
over-estimates it by the mean gradient's square, small near the end of a stage.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedhar.data.windows import WindowSet
from fedhar.training.loop import Regularizer

FISHER_BATCH = 16
ANCHOR = "continual-anchor"  # train message record: the previous stage's global tensors
IMPORTANCE = "continual-importance"  # train message record (ewc): the normalised Fisher
FISHER_REQUEST = "continual-fisher"  # train config key: estimate the Fisher before training, send it back
FISHER_REPLY = "importance"  # train reply record: the client's Fisher estimate


def anchor_penalty(model: nn.Module, anchor: dict[str, np.ndarray], importance: dict[str, np.ndarray] | None,
                   strength: float) -> Regularizer:  # fmt: skip
    """``λ/2 · Σ F (w − anchor)²`` over the trainable tensors (F = 1 without ``importance``)."""
    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    terms = []
    for name, value in anchor.items():
        weight = torch.from_numpy(importance[name]).to(device) if importance is not None else None
        terms.append((params[name], torch.from_numpy(value).to(device), weight))

    def penalty(_: nn.Module) -> torch.Tensor:
        total = sum(((p - a) ** 2 * w).sum() if w is not None else ((p - a) ** 2).sum() for p, a, w in terms)
        return 0.5 * strength * total

    return penalty


def fisher_diagonal(model: nn.Module, ws: WindowSet, max_windows: int, seed: int) -> dict[str, np.ndarray]:
    """Empirical diagonal Fisher of the trainable tensors on (a seeded sample of) ``ws``: the mean over windows
    of the squared gradient of the log-likelihood of the true label (micro-batch approximation, see above)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ws), min(max_windows, len(ws)), replace=False))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums = {n: torch.zeros_like(p) for n, p in named}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model that is evaluated
    loss_fn = nn.CrossEntropyLoss()
    try:
        for start in range(0, len(idx), FISHER_BATCH):
            batch = idx[start : start + FISHER_BATCH]
            xb = torch.from_numpy(ws.x[batch]).to(device)
            yb = torch.from_numpy(ws.y[batch]).to(device)
            model.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            for n, p in named:
                if p.grad is not None:
                    sums[n] += len(batch) * p.grad.detach() ** 2
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {n: (s / max(1, len(idx))).cpu().numpy().astype(np.float32) for n, s in sums.items()}


def merge_importance(estimates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray] | None:
    """The clients' Fisher estimates averaged with their window counts as weights."""
    total = sum(n for _, n in estimates)
    if not estimates or total <= 0:
        return None
    names = list(estimates[0][0])
    return {k: sum(f[k].astype(np.float64) * n for f, n in estimates) / total for k in names}


def normalised(importance: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scaled to mean 1 over every trainable value (λ then means what it means for l2)."""
    mean = float(np.mean(np.concatenate([v.ravel() for v in importance.values()])))
    scale = 1.0 / mean if mean > 0 else 1.0
    return {k: (v * scale).astype(np.float32) for k, v in importance.items()}
