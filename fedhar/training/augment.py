"""Training-time augmentation of raw inertial windows: simulate how people wear the same device.

Subject-disjoint errors on waist-phone data are mostly SITTING <-> STANDING for a subject whose
phone sits a few degrees off the others' (the two postures differ by a tilt of the same order).
A random rigid rotation of the sensor frame -- one rotation per window, applied to every 3-axis
vector group (accelerometer, gyroscope, magnetometer) because they share one rigid body -- and a
random amplitude scale teach the model not to trust one person's mounting.
"""

from __future__ import annotations

import math

import torch

from fedhar.config import AugmentConfig
from fedhar.data.recording import SensorLayout

#: sensor groups that are 3-axis vectors in the device frame, so a rotation of the device rotates them
VECTOR_GROUPS = ("acc", "gyro", "mag")


def random_rotations(n: int, max_degrees: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` rotation matrices [n, 3, 3]: axis uniform on the sphere, angle uniform in [0, max_degrees]."""
    axis = torch.randn(n, 3, generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-12)
    angle = torch.rand(n, generator=generator) * math.radians(max_degrees)
    k = torch.zeros(n, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)  # skew-symmetric cross-product matrix of the axis
    sin, cos = angle.sin().view(n, 1, 1), angle.cos().view(n, 1, 1)
    return torch.eye(3).expand(n, 3, 3) + sin * k + (1 - cos) * (k @ k)  # Rodrigues


def augment_batch(x: torch.Tensor, layout: SensorLayout, cfg: AugmentConfig,
                  generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """A new batch [B, C, T] of raw windows (sensor units, before the model's normalisation)."""
    if not cfg.active:
        return x
    out = x.clone()
    b = x.shape[0]
    if cfg.rotation_degrees > 0:
        rot = random_rotations(b, cfg.rotation_degrees, generator).to(x.device, x.dtype)
        for name, idx in layout.groups:
            if name in VECTOR_GROUPS and len(idx) == 3:
                out[:, list(idx)] = rot @ x[:, list(idx)]
    if cfg.scale_std > 0:
        scale = 1 + cfg.scale_std * torch.randn(b, len(layout.groups), generator=generator)
        for g, (_, idx) in enumerate(layout.groups):
            out[:, list(idx)] *= scale[:, g].to(x.device, x.dtype).view(b, 1, 1)
    return out
