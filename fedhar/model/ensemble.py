"""Several checkpoints of one task read as one model: the mean of their class probabilities.

Runs that differ only by seed disagree on the windows a task finds ambiguous (on HAPT, sitting
against standing); averaging their probabilities is the standard way to measure how much of a
score is seed variance. The ensemble returns log mean probabilities, so everything that reads a
model's logits (argmax, softmax confidence, the loss) reads it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedhar.errors import CheckpointError


class Ensemble(nn.Module):
    """Mean class probabilities of ``members``, which must share classes, sensors, window and how their data
    were cut into windows (the data are cut once, the first member's way, for all)."""

    def __init__(self, members: list[nn.Module], names: list[str] | None = None):
        super().__init__()
        if not members:
            raise CheckpointError("an ensemble needs at least one checkpoint")
        names = names or [f"member {i}" for i in range(len(members))]
        first = members[0].data
        for name, m in zip(names[1:], members[1:]):
            for what, a, b in (("classes", first.label_names, m.data.label_names),
                               ("sensor layout", first.layout.to_json(), m.data.layout.to_json()),
                               ("window length", first.window_len, m.data.window_len),
                               ("sample rate", first.sample_rate, m.data.sample_rate),
                               ("how the windows were cut", first.windowing, m.data.windowing)):  # fmt: skip
                if a != b:
                    raise CheckpointError(f"{name} does not match {names[0]} in {what} ({b} vs {a}): "
                                          "ensemble only checkpoints trained for the same task")  # fmt: skip
        self.members = nn.ModuleList(members)
        self.data = first  # each member normalises raw windows with its own statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(dim=-1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def load_model(folders: list[str | Path], device: str = "cpu") -> nn.Module:
    """One checkpoint as its model; several as their :class:`Ensemble`."""
    from fedhar.model.state import load_checkpoint

    if len(folders) == 1:
        return load_checkpoint(folders[0], device)
    resolved = [Path(f).resolve() for f in folders]
    repeated = sorted({str(f) for f, r in zip(folders, resolved) if resolved.count(r) > 1})
    if repeated:
        raise CheckpointError(f"{repeated} given more than once: an ensemble would weigh it twice")
    return Ensemble([load_checkpoint(f, device) for f in folders], [str(f) for f in folders])
