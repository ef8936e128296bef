import numpy as np
import torch

from fedhar.config import AugmentConfig, ModelConfig, TrainConfig
from fedhar.data.recording import SensorLayout
from fedhar.model.har_model import DataSpec, build_model
from fedhar.training.augment import augment_batch, random_rotations
from fedhar.training.loop import fit

LAYOUT = SensorLayout.from_groups({"acc": ["acc_x", "acc_y", "acc_z"], "gyro": ["gyro_x", "gyro_y", "gyro_z"],
                                   "baro": ["pressure"]})  # fmt: skip


def _batch(b=64, t=20):
    return torch.randn(b, 7, t, generator=torch.Generator().manual_seed(1))


def test_rotations_are_proper_and_within_the_angle():
    rot = random_rotations(500, 15.0, torch.Generator().manual_seed(0)).double()
    eye = torch.eye(3, dtype=torch.float64).expand(500, 3, 3)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(500, dtype=torch.float64), atol=1e-5)
    angle = torch.rad2deg(torch.arccos(((rot.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)))
    assert angle.max() <= 15.0 + 1e-3 and angle.max() > 10.0  # uses the range, not just tiny angles


def test_one_rigid_rotation_per_window_for_every_vector_group():
    x = _batch()
    x[:, 3:6] = x[:, 0:3]  # gyro == acc: a shared rotation keeps them equal
    out = augment_batch(x, LAYOUT, AugmentConfig(rotation_degrees=30), torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0:3], out[:, 3:6])
    assert torch.allclose(out[:, 0:3].norm(dim=1), x[:, 0:3].norm(dim=1), atol=1e-5)  # lengths kept
    assert not torch.allclose(out[:, 0:3], x[:, 0:3])
    assert torch.equal(out[:, 6], x[:, 6])  # a scalar sensor is not rotated


def test_scale_is_one_factor_per_window_and_group():
    x = _batch().abs() + 0.1
    out = augment_batch(x, LAYOUT, AugmentConfig(scale_std=0.1), torch.Generator().manual_seed(0))
    ratio = out / x
    for idx in ([0, 1, 2], [3, 4, 5], [6]):
        r = ratio[:, idx]
        assert torch.allclose(r, r[:, :1, :1].expand_as(r), atol=1e-5)
    assert ratio[:, 0, 0].std() > 0.05


def test_off_by_default_and_seeded():
    x = _batch()
    assert augment_batch(x, LAYOUT, AugmentConfig(), torch.Generator()) is x
    cfg = AugmentConfig(rotation_degrees=10, scale_std=0.1)
    a = augment_batch(x, LAYOUT, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(x, LAYOUT, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(x, _batch())  # the caller's batch is left alone


def test_gravity_tilts_by_at_most_the_angle():
    x = torch.zeros(200, 7, 4)
    x[:, 0] = 1.0  # 1 g along x
    out = augment_batch(x, LAYOUT, AugmentConfig(rotation_degrees=10), torch.Generator().manual_seed(0))
    tilt = torch.rad2deg(torch.arccos(out[:, 0, 0].clamp(-1, 1)))
    assert tilt.max() <= 10 + 1e-3


def test_fit_with_augmentation_is_seeded_and_differs_from_plain(tiny_windows):
    def losses(augment):
        model = build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8),
                            DataSpec.from_windows(tiny_windows), seed=0)  # fmt: skip
        cfg = TrainConfig(epochs=2, batch_size=16, patience=0, device="cpu", augment=augment)
        return [h["train_loss"] for h in fit(model, tiny_windows, None, cfg, seed=0).history]

    aug = AugmentConfig(rotation_degrees=20, scale_std=0.1)
    first = losses(aug)
    assert first == losses(aug)
    assert first != losses(AugmentConfig())
    assert np.isfinite(first).all()
