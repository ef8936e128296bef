"""Structured convolutional projection: an inertial window → a short sequence of backbone tokens."""

from __future__ import annotations

import torch
from torch import nn

from fedhar.config import divisor_near
from fedhar.errors import ConfigError


class GroupConvStack(nn.Module):
    """Temporal convolutions over one sensor group's channels (e.g. the 3 accelerometer axes)."""

    def __init__(self, in_channels: int, channels: int, depth: int, kernel_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for _ in range(depth):
            layers += [nn.Conv1d(c_in, channels, kernel_size, padding=kernel_size // 2),
                       nn.GroupNorm(1, channels), nn.GELU()]  # fmt: skip
            c_in = channels
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvProjection(nn.Module):
    """Per-group conv stacks, 1×1 fusion, patching into ``tokens`` tokens, linear map to ``hidden_size``.

    Group-wise stacks keep each sensor's physics separate (no mixing of g with rad/s before
    features exist); normalisation is GroupNorm, not BatchNorm, so federated averaging never has
    to reconcile running statistics.
    """

    def __init__(
        self,
        groups: dict[str, list[int]],
        window_len: int,
        tokens: int,
        hidden_size: int,
        conv_channels: int = 64,
        depth: int = 2,
        kernel_size: int = 5,
        dropout: float = 0.1,
        stats_token: bool = False,
    ):
        super().__init__()
        if window_len % tokens:
            raise ConfigError(
                f"model.tokens={tokens} must divide the window length {window_len} "
                f"(e.g. tokens={divisor_near(window_len, tokens)})"
            )
        self.group_index = {g: list(idx) for g, idx in groups.items()}
        for g, idx in self.group_index.items():
            self.register_buffer(f"idx_{g}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.stacks = nn.ModuleDict(
            {g: GroupConvStack(len(idx), conv_channels, depth, kernel_size) for g, idx in self.group_index.items()}
        )
        self.fuse = nn.Sequential(nn.Conv1d(conv_channels * len(groups), conv_channels, 1), nn.GELU())
        self.tokens = tokens
        self.patch = window_len // tokens
        self.proj = nn.Linear(conv_channels * self.patch, hidden_size)
        # Per-channel mean (gravity direction → posture) and std (motion intensity) of the whole
        # window as one leading token: convolutions see posture only through local patches.
        num_channels = sum(len(idx) for idx in self.group_index.values())
        self.stats = nn.Linear(2 * num_channels, hidden_size) if stats_token else None
        self.position = nn.Parameter(torch.zeros(tokens + int(stats_token), hidden_size))
        nn.init.normal_(self.position, std=0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T] → tokens [B, tokens (+1 with the stats token), hidden]."""
        feats = [self.stacks[g](x.index_select(1, getattr(self, f"idx_{g}"))) for g in self.group_index]
        h = self.fuse(torch.cat(feats, dim=1))  # [B, F, T]
        b, f, _ = h.shape
        h = h.view(b, f, self.tokens, self.patch).permute(0, 2, 1, 3).reshape(b, self.tokens, f * self.patch)
        tokens = self.proj(h)
        if self.stats is not None:
            summary = self.stats(torch.cat([x.mean(dim=2), x.std(dim=2)], dim=1)).unsqueeze(1)
            tokens = torch.cat([summary, tokens], dim=1)  # first, so causal backbones attend to it everywhere
        return self.dropout(tokens + self.position)


class WindowCues(nn.Module):
    """Whole-window physics cues for the head: gravity direction in the device frame and log sway.

    On a waist phone sitting and standing differ by tilt and postural sway. Read from the raw
    window (g, rad/s), so training-set normalisation cannot hide absolute sway, and on a log
    scale, so a still phone and a walking one both land in range. A small layer maps them to
    ``width`` features that the head reads beside the pooled backbone output.
    """

    def __init__(self, groups: dict[str, list[int]], width: int = 32, eps: float = 1e-4):
        super().__init__()
        acc = groups.get("acc")
        self.acc_index = list(acc) if acc is not None and len(acc) == 3 else None
        self.eps = eps
        num_cues = sum(len(idx) for idx in groups.values()) + (3 if self.acc_index else 0)
        self.net = nn.Sequential(nn.Linear(num_cues, width), nn.LayerNorm(width), nn.GELU())
        self.width = width

    def cues(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T] raw → [B, num_cues]: unit mean acceleration (if 3-axis acc) and log std per channel."""
        sway = torch.log(x.std(dim=2) + self.eps)
        if self.acc_index is None:
            return sway
        gravity = x[:, self.acc_index].mean(dim=2)
        tilt = gravity / gravity.norm(dim=1, keepdim=True).clamp_min(self.eps)
        return torch.cat([tilt, sway], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.cues(x))
