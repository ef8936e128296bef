"""The synthetic dataset: tags, units, physics, determinism, spec errors, learnability and domain shift."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.config import DataConfig, ModelConfig, TrainConfig
from fedhar.data.pipeline import load_windows
from fedhar.data.synthetic import SyntheticSpec, axes_matrix, generate
from fedhar.data.windows import WindowSet
from fedhar.errors import ConfigError
from tests.conftest import BASIC6

TRAIN, TEST = ["1", "2", "3", "4"], ["5", "6"]


def _windows(**spec) -> WindowSet:
    return load_windows(DataConfig(synthetic=spec), seed=0, use_cache=False)


def _segment(rec, activity: str) -> np.ndarray:
    return rec.signal[rec.labels == BASIC6.index(activity)]


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))))


def test_default_spec_is_small_tagged_and_at_native_rate():
    rs = generate(SyntheticSpec.from_dict({}), seed=0)
    assert rs.dataset == "synthetic" and rs.label_names == BASIC6
    assert len(rs.recordings) == 6
    for rec in rs.recordings:
        assert rec.dataset == "synthetic" and "synthetic" in rec.source and "not real data" in rec.source
        assert (rec.device, rec.placement, rec.sample_rate) == ("phone-a", "waist", 50.0)
        assert rec.session == f"s{int(rec.subject):02d}-phone-a-waist"
        assert rec.layout.channels == ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
        assert rec.signal.dtype == np.float32 and np.isfinite(rec.signal).all()
        # 20 s of each activity, unlabelled transitions around them
        assert np.bincount(rec.labels[rec.labels >= 0], minlength=6).tolist() == [1000] * 6
        assert (rec.labels == -1).sum() == 7 * 100
    assert rs.subjects() == ["1", "2", "3", "4", "5", "6"]


def test_default_windows_are_a_few_hundred_and_marked_synthetic():
    ws = _windows()
    assert 400 <= len(ws) <= 600
    assert ws.synthetic and set(ws.dataset) == {"synthetic"}
    assert ws.x.shape[1:] == (6, 128) and ws.sample_rate == 50.0
    counts = ws.class_counts()
    assert counts.min() >= 0.9 * counts.max()  # balanced


def test_same_seed_same_recordings_and_keys_are_independent():
    spec = SyntheticSpec.from_dict({"subjects": 2, "seconds_per_activity": 3})
    a, b = generate(spec, seed=7), generate(spec, seed=7)
    for ra, rb in zip(a.recordings, b.recordings):
        np.testing.assert_array_equal(ra.signal, rb.signal)
        np.testing.assert_array_equal(ra.labels, rb.labels)
    c = generate(spec, seed=8)
    assert not np.allclose(a.recordings[0].signal[:100], c.recordings[0].signal[:100])
    # adding a device does not change the other recordings (randomness keyed by names, not order)
    wider_spec = {"subjects": 2, "seconds_per_activity": 3, "devices": ["phone-b", "phone-a"]}
    wider = generate(SyntheticSpec.from_dict(wider_spec), 7)
    same = [r for r in wider.recordings if r.session == a.recordings[1].session][0]
    np.testing.assert_array_equal(same.signal, a.recordings[1].signal)


def test_physics_gravity_posture_gait_and_impacts():
    rs = generate(SyntheticSpec.from_dict({"subjects": 3}), seed=0)
    sitting_tilt = []
    for rec in rs.recordings:
        standing, sitting, laying = (_segment(rec, a) for a in ("STANDING", "SITTING", "LAYING"))
        for static in (standing, sitting, laying):
            assert 0.95 < np.linalg.norm(static[:, :3], axis=1).mean() < 1.05  # 1 g of gravity
            assert np.abs(static[:, 3:]).mean() < 0.05  # almost no rotation
        assert _angle_deg(standing[:, :3].mean(0), laying[:, :3].mean(0)) > 60  # lying turns gravity
        sitting_tilt.append(_angle_deg(standing[:, :3].mean(0), sitting[:, :3].mean(0)))
        walking, down = _segment(rec, "WALKING"), _segment(rec, "WALKING_DOWNSTAIRS")
        assert walking[:, 3:].std(0).max() > 0.2  # trunk rotation while walking (rad/s)
        magnitude = np.linalg.norm(walking[:, :3], axis=1)
        spectrum = np.abs(np.fft.rfft(magnitude - magnitude.mean()))
        cadence = np.fft.rfftfreq(len(magnitude), 1 / rec.sample_rate)[spectrum.argmax()]
        assert 1.4 < cadence < 2.4  # steps per second
        down_peak = np.percentile(np.linalg.norm(down[:, :3], axis=1), 99)
        assert down_peak > np.percentile(magnitude, 99) + 0.1  # landing impacts going downstairs
    assert 8 < np.median(sitting_tilt) < 40  # sitting tilts the waist (single subjects may barely differ)


def test_devices_keep_their_rates_and_axis_conventions():
    rs = generate(SyntheticSpec.from_dict({"subjects": 1, "devices": ["phone-a", "phone-b", "watch-c"]}), seed=0)
    by_device = {r.device: r for r in rs.recordings}
    assert {d: r.sample_rate for d, r in by_device.items()} == {"phone-a": 50.0, "phone-b": 100.0, "watch-c": 25.0}
    a_up = _segment(by_device["phone-a"], "STANDING")[:, :3].mean(0)
    b_up = _segment(by_device["phone-b"], "STANDING")[:, :3].mean(0)
    assert a_up[0] > 0.9  # phone-a: +1 g along x when upright at the waist
    assert b_up[1] < -0.9  # phone-b: axes "y,x,-z" and iOS-style sign → -1 g along y
    noise = {d: _segment(r, "STANDING")[:, 0].std() for d, r in by_device.items()}
    assert noise["phone-b"] > noise["phone-a"]
    np.testing.assert_array_equal(axes_matrix("y,x,-z") @ np.array([1.0, 2.0, 3.0]), [2.0, 1.0, -3.0])


def test_custom_devices_placements_and_explicit_recordings():
    spec = SyntheticSpec.from_dict({
        "recordings": [[3, "my-watch", "ankle"], ["1", "phone-a", "waist"]],
        "seconds_per_activity": 3,
        "custom_devices": {"my-watch": {"base": "watch-c", "sample_rate": 32}},
        "custom_placements": {"ankle": {"segment": "thigh", "swing_deg": 30, "lever_m": 0.8}},
    })  # fmt: skip
    rs = generate(spec, seed=0)
    assert [r.session for r in rs.recordings] == ["s03-my-watch-ankle", "s01-phone-a-waist"]
    assert rs.recordings[0].sample_rate == 32.0 and rs.recordings[0].subject == "3"
    assert spec.device_table()["my-watch"].acc_noise == spec.device_table()["watch-c"].acc_noise


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"subject": 3}, "did you mean `subjects`"),
        ({"subjects": 0}, "subjects must be >= 1"),
        ({"devices": ["phone-z"]}, "unknown device `phone-z`"),
        ({"placements": ["head"]}, "unknown placement `head`"),
        ({"custom_devices": {"d": {"axes": "x,x,z"}}}, "custom_devices.d.axes"),
        ({"custom_devices": {"d": {"base": "nokia"}}}, "base `nokia` is not a preset"),
        ({"custom_placements": {"p": {"segment": "head"}}}, "segment must be one of"),
        ({"recordings": [[1, "phone-a"]]}, "recordings[0] must be [subject, device, placement]"),
        ({"recordings": [["x", "phone-a", "waist"]]}, "subject must be a positive integer"),
        ({"seconds_per_activity": 0.5}, "at least 1 s"),
    ],
)
def test_bad_specs_name_the_key_and_the_fix(spec, message):
    with pytest.raises(ConfigError) as err:
        SyntheticSpec.from_dict(spec)
    assert message in str(err.value) and "data.synthetic" in str(err.value)


def _features(ws) -> np.ndarray:
    magnitude = np.linalg.norm(ws.x[:, :3], axis=1)
    return np.concatenate([ws.x.mean(2), ws.x.std(2), magnitude.std(1, keepdims=True)], axis=1)


def _nearest_centroid_accuracy(train, tests: list) -> list[float]:
    f_train = _features(train)
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    centroids = np.stack([((f_train - mean) / std)[train.y == c].mean(0) for c in range(train.num_classes)])
    accuracies = []
    for test in tests:
        f = (_features(test) - mean) / std
        predicted = ((f[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        accuracies.append(float((predicted == test.y).mean()))
    return accuracies


def test_default_spec_is_learnable_across_subjects():
    ws = _windows()
    (accuracy,) = _nearest_centroid_accuracy(ws.where(subject=TRAIN), [ws.where(subject=TEST)])
    assert accuracy > 0.6  # chance is 1/6


def test_device_and_placement_shift_lower_accuracy():
    ws = _windows(devices=["phone-a", "phone-b"], placements=["waist", "pocket"])
    train = ws.where(subject=TRAIN, device="phone-a", placement="waist")
    same, other_placement, other_device = _nearest_centroid_accuracy(
        train,
        [ws.where(subject=TEST, device="phone-a", placement="waist"),
         ws.where(subject=TEST, device="phone-a", placement="pocket"),
         ws.where(subject=TEST, device="phone-b", placement="waist")],
    )  # fmt: skip
    assert same > 0.6
    assert other_placement < same - 0.2
    assert other_device < same - 0.15


def test_deepconvlstm_learns_in_domain_and_drops_under_shift():
    """fedhar's own training loop and baseline: in-domain far above chance, placement and device shift far below."""
    import torch

    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.training.loop import evaluate, fit

    torch.set_num_threads(1)
    ws = _windows(devices=["phone-a", "phone-b"], placements=["waist", "pocket"])
    train = ws.where(subject=TRAIN, device="phone-a", placement="waist")
    model = build_model(ModelConfig(kind="deepconvlstm", hidden=32), DataSpec.from_windows(train), seed=0)
    fit(model, train, None, TrainConfig(epochs=6, batch_size=32, lr=3e-3, device="cpu"), seed=0)
    same, other_placement, other_device = (
        evaluate(model, ws.where(subject=TEST, device=d, placement=p))["accuracy"]
        for d, p in (("phone-a", "waist"), ("phone-a", "pocket"), ("phone-b", "waist"))
    )
    assert same > 0.6
    assert other_placement < same - 0.25
    assert other_device < same - 0.25
