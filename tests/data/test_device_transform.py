"""The simulated second device: frame, gain, bias, drift, noise and sampling, as a device would record them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.signal import resample_poly

from fedhar.config import from_dict
from fedhar.data.device_transform import DeviceTransform, apply_device_transform
from fedhar.data.preprocess import resample_recording
from fedhar.data.recording import IMU6, Recording, SensorLayout
from fedhar.data.windows import WindowSet, window_recording
from fedhar.errors import ConfigError, DataError

RATE = 50.0


def _ws(x, start_s=None, session=None, layout=IMU6, rate=RATE) -> WindowSet:
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    return WindowSet(
        x=x, y=np.arange(n) % 2, label_names=["a", "b"], layout=layout, sample_rate=rate,
        subject=np.full(n, "1"), dataset=np.full(n, "toy"), device=np.full(n, "phone"),
        placement=np.full(n, "waist"), session=np.full(n, "s1") if session is None else np.asarray(session),
        start_s=np.zeros(n) if start_s is None else np.asarray(start_s, dtype=np.float64), notes={"origin": "test"},
    )  # fmt: skip


def _random(n=16, t=128, seed=0) -> WindowSet:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6, t))
    x[:, 0] += 1.0  # gravity on x
    return _ws(x, start_s=np.arange(n) * t / RATE)


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _sine(freq: float, t: int, phase: float = 0.3) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(t) / RATE + phase)


# ---- frame ---------------------------------------------------------------------------------------


def test_rotation_keeps_each_sensors_norm_and_matches_a_hand_rotation():
    ws = _random()
    out = apply_device_transform(ws, DeviceTransform(rotate_deg=[20.0, -35.0, 110.0]))
    for sl in (slice(0, 3), slice(3, 6)):
        np.testing.assert_allclose(np.linalg.norm(out.x[:, sl], axis=1), np.linalg.norm(ws.x[:, sl], axis=1),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    m = _rot(0, 20.0) @ _rot(1, -35.0) @ _rot(2, 110.0)  # the new sensor's axes in the old frame
    for sl in (slice(0, 3), slice(3, 6)):  # a vector v reads as Mᵀ v, on acc and gyro alike
        np.testing.assert_allclose(out.x[:, sl], np.einsum("ji,njt->nit", m, ws.x[:, sl]), atol=1e-5)
    # by hand: a sensor turned +90° about z sees the old x axis along its -y
    one = apply_device_transform(_ws(np.eye(6)[None, :, :1]), DeviceTransform(rotate_deg=[0, 0, 90]))
    np.testing.assert_allclose(one.x[0, :3, 0], [0.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(one.x[0, 3:, 0], [0.0, 0.0, 0.0], atol=1e-6)


def test_axis_permutation_applies_to_acc_and_gyro():
    ws = _random()
    out = apply_device_transform(ws, DeviceTransform(axes="y,x,-z"))
    for base in (0, 3):
        np.testing.assert_array_equal(out.x[:, base + 0], ws.x[:, base + 1])
        np.testing.assert_array_equal(out.x[:, base + 1], ws.x[:, base + 0])
        np.testing.assert_array_equal(out.x[:, base + 2], -ws.x[:, base + 2])
    # mounting first, then the device's axis convention
    both = apply_device_transform(ws, DeviceTransform(axes="z,-x,y", rotate_deg=[0, 0, 90]))
    rotated = apply_device_transform(ws, DeviceTransform(rotate_deg=[0, 0, 90]))
    np.testing.assert_allclose(both.x[:, [0, 1, 2]], rotated.x[:, [2, 0, 1]] * np.array([1, -1, 1])[None, :, None],
                               atol=1e-6)  # fmt: skip


# ---- sampling ------------------------------------------------------------------------------------


def test_a_10hz_device_removes_15hz_and_keeps_1hz():
    t = 256
    x = np.zeros((4, 6, t))
    x[:, 0] = _sine(15.0, t)
    x[:, 1] = _sine(1.0, t)
    x[:, 3] = 1.0 + 0.5 * _sine(0.5, t)
    ws = _ws(x, start_s=np.arange(4) * t / RATE)
    out = apply_device_transform(ws, DeviceTransform(sample_rate=10.0)).x
    inner = slice(50, -50)  # beyond the anti-aliasing filter's reach (10 device samples = 50 window samples)
    fast = np.sqrt(np.mean(out[:, 0, inner] ** 2)) / np.sqrt(np.mean(x[:, 0, inner] ** 2))
    assert fast < 0.002  # measured 7e-5 (99.99 % attenuated): above the device's 5 Hz Nyquist nothing is left
    whole = np.sqrt(np.mean(out[:, 0] ** 2)) / np.sqrt(np.mean(x[:, 0] ** 2))
    assert whole < 0.1  # the window edges keep some (odd extension holds the edge value); measured 0.049
    slow = np.sqrt(np.mean(out[:, 1, inner] ** 2)) / np.sqrt(np.mean(x[:, 1, inner] ** 2))
    assert slow > 0.95  # measured 0.969 (linear interpolation between the 10 Hz samples)
    assert np.abs(out[:, 1, inner] - x[:, 1, inner]).max() < 0.06  # 1 - cos(pi * 1 / 10) = 0.049
    assert np.abs(out[:, 1] - x[:, 1]).max() < 0.1  # no ringing at the edges either
    np.testing.assert_allclose(out[:, 3], x[:, 3], atol=0.02)  # gravity + 0.5 Hz sway: unchanged
    # a device at the windows' rate or faster changes nothing
    np.testing.assert_array_equal(apply_device_transform(ws, DeviceTransform(sample_rate=100.0)).x, ws.x)


def test_sampling_matches_fedhars_pipeline_on_a_device_recording():
    """Interior of the transformed windows = the recording sampled at 20 Hz (anti-aliased), then resampled to
    50 Hz by fedhar's pipeline (resample_recording) and windowed: windows of one recording share device samples."""
    from fedhar.data.synthetic import SyntheticSpec, generate

    rec = generate(SyntheticSpec.from_dict({"subjects": 1, "placements": ["wrist"], "seconds_per_activity": 8}))
    rec = rec.recordings[0]
    rec.labels[:] = 0
    x, _, starts = window_recording(rec, 128, 37)
    ws = _ws(x, start_s=starts / RATE)
    out = apply_device_transform(ws, DeviceTransform(sample_rate=20.0)).x
    device = Recording(signal=resample_poly(rec.signal.astype(np.float64), 2, 5, axis=0), labels=np.zeros(
        math.ceil(len(rec.signal) * 2 / 5), np.int64), sample_rate=20.0, subject="1", session="s", dataset="d")
    back = resample_recording(device, RATE).signal
    ok = starts + 128 <= len(back)
    oracle = np.stack([back[s : s + 128].T for s in starts[ok]])
    inner = slice(30, -30)
    assert np.abs(out[ok][..., inner] - oracle[..., inner]).max() < 1e-4  # measured 2e-7
    # the window edges stay close too (odd extension: no ringing); measured 0.0003 mean, 0.006 at the 99th percentile
    assert np.abs(out[ok] - oracle).mean() < 0.002
    assert np.percentile(np.abs(out[ok] - oracle), 99) < 0.02


# ---- calibration, drift, noise -------------------------------------------------------------------


def test_gain_and_bias_are_exact():
    ws = _random()
    tr = DeviceTransform(acc_scale=[1.1, 0.9, 1.0], acc_bias=[0.05, -0.02, 0.0], gyro_scale=[2.0, 1.0, 0.5],
                         gyro_bias=[0.0, 0.01, -0.3])  # fmt: skip
    out = apply_device_transform(ws, tr)
    want_acc = ws.x[:, :3] * np.array([1.1, 0.9, 1.0])[None, :, None] + np.array([0.05, -0.02, 0.0])[None, :, None]
    want_gyro = ws.x[:, 3:] * np.array([2.0, 1.0, 0.5])[None, :, None] + np.array([0.0, 0.01, -0.3])[None, :, None]
    np.testing.assert_allclose(out.x[:, :3], want_acc, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.x[:, 3:], want_gyro, rtol=1e-6, atol=1e-6)


def test_drift_is_continuous_within_a_session_and_differs_across_sessions():
    t = 128
    starts = np.array([0.0, 64, 128, 192, 0, 64]) / RATE  # 50 % overlap: windows 0-3 of s1, 0-1 of s2
    sessions = ["s1"] * 4 + ["s2"] * 2
    ws = _ws(np.zeros((6, 6, t)), start_s=starts, session=sessions)
    out = apply_device_transform(ws, DeviceTransform(acc_drift=0.05, gyro_drift=0.02), seed=3).x
    assert out[:4].std() > 0.001  # there is a drift
    for k in range(3):  # overlapping samples are the same instants: the same drift
        np.testing.assert_allclose(out[k, :, 64:], out[k + 1, :, :64], atol=1e-6)
    # abutting windows (0 and 2): the drift moves little in one sample (< 0.1 Hz)
    step = np.abs(out[2, :, 0] - out[0, :, -1])
    assert step.max() < 0.002 and step.max() < 0.05 * np.abs(out[:4]).max()
    # another recording at the same times drifts differently
    assert np.abs(out[4] - out[0]).max() > 0.01
    # acc and gyro have their own processes and magnitudes
    assert not np.allclose(out[:4, :3], out[:4, 3:] * 0.05 / 0.02, atol=1e-3)
    # a slow process: most of it is one value per window
    assert np.abs(np.diff(out[0], axis=-1)).max() < 0.002


def test_drift_std_is_about_the_setting_over_many_recordings():
    n = 400
    ws = _ws(np.zeros((n, 6, 8)), start_s=np.zeros(n), session=[f"s{i}" for i in range(n)])
    out = apply_device_transform(ws, DeviceTransform(acc_drift=0.05)).x
    assert 0.04 < out[:, :3].std() < 0.06
    assert (out[:, 3:] == 0).all()


def test_noise_std_per_sample():
    ws = _ws(np.zeros((200, 6, 128)))
    out = apply_device_transform(ws, DeviceTransform(acc_noise=0.02, gyro_noise=0.05), seed=1).x
    assert abs(out[:, :3].std() / 0.02 - 1) < 0.1
    assert abs(out[:, 3:].std() / 0.05 - 1) < 0.1
    # with a slower device, the noise is per device sample (window samples 0, 5, 10, ... are its samples)
    out = apply_device_transform(ws, DeviceTransform(sample_rate=10.0, acc_noise=0.02), seed=1).x
    assert abs(out[:, :3, ::5].std() / 0.02 - 1) < 0.1
    assert out[:, :3].std() < 0.9 * 0.02  # in between, interpolated
    assert (out[:, 3:] == 0).all()


def test_deterministic_per_seed_and_another_seed_differs():
    ws = _random()
    tr = DeviceTransform(sample_rate=20.0, acc_noise=0.01, gyro_noise=0.01, acc_drift=0.01, gyro_drift=0.01)
    a, b = apply_device_transform(ws, tr, seed=5), apply_device_transform(ws, tr, seed=5)
    np.testing.assert_array_equal(a.x, b.x)
    c = apply_device_transform(ws, tr, seed=6)
    assert np.abs(a.x - c.x).max() > 1e-3


# ---- the window set --------------------------------------------------------------------------------


def test_tags_notes_and_shape_and_the_input_is_unchanged():
    ws = _random()
    before = ws.x.copy()
    tr = DeviceTransform(name="watch-b", sample_rate=25.0, rotate_deg=[5, 5, 5], acc_noise=0.01, acc_drift=0.01)
    out = apply_device_transform(ws, tr)
    assert out.x.shape == ws.x.shape and out.x.dtype == np.float32
    assert set(out.device) == {"watch-b"} and set(ws.device) == {"phone"}
    for f in ("y", "subject", "dataset", "placement", "session", "start_s"):
        np.testing.assert_array_equal(getattr(out, f), getattr(ws, f))
    assert out.label_names == ws.label_names and out.layout == ws.layout and out.sample_rate == ws.sample_rate
    assert out.notes == {"origin": "test", "device_transform": dataclasses.asdict(tr)}
    assert ws.notes == {"origin": "test"}
    np.testing.assert_array_equal(ws.x, before)
    empty = apply_device_transform(ws.subset(np.zeros(len(ws), bool)), tr)
    assert len(empty) == 0


def test_acc_only_gyro_only_and_other_channels():
    ws = _random()
    tr = DeviceTransform(axes="y,x,z", acc_bias=[1.0, 0, 0], gyro_bias=[0, 2.0, 0], sample_rate=10.0)
    for group, sl in (("acc", slice(0, 3)), ("gyro", slice(3, 6))):
        layout = SensorLayout.from_groups({group: [f"{group}_x", f"{group}_y", f"{group}_z"]})
        one = _ws(ws.x[:, sl], start_s=ws.start_s, layout=layout)
        full = apply_device_transform(ws, tr).x[:, sl]
        np.testing.assert_allclose(apply_device_transform(one, tr).x, full, atol=1e-6)
    layout = SensorLayout.from_groups({"acc": ["acc_x", "acc_y", "acc_z"], "mag": ["mag_x", "mag_y", "mag_z"]})
    mixed = _ws(ws.x, start_s=ws.start_s, layout=layout)
    out = apply_device_transform(mixed, tr)
    np.testing.assert_array_equal(out.x[:, 3:], ws.x[:, 3:])  # the magnetometer is not touched
    np.testing.assert_allclose(out.x[:, :3], apply_device_transform(ws, tr).x[:, :3], atol=1e-6)
    # channels listed in another order keep their meaning
    layout = SensorLayout.from_groups({"acc": ["acc_z", "acc_x", "acc_y"]})
    shuffled = apply_device_transform(_ws(ws.x[:, [2, 0, 1]], layout=layout), DeviceTransform(axes="y,x,z"))
    np.testing.assert_array_equal(shuffled.x, ws.x[:, [2, 1, 0]])


def test_a_group_without_three_channels_and_a_layout_without_sensors_fail():
    two = SensorLayout.from_groups({"acc": ["acc_x", "acc_y"]})
    with pytest.raises(DataError, match=r"3 channels .* `acc`.*\['acc_x', 'acc_y'\]"):
        apply_device_transform(_ws(np.zeros((2, 2, 16)), layout=two), DeviceTransform())
    other = SensorLayout.from_groups({"ch": ["ch0"]})
    with pytest.raises(DataError, match="acc.*gyro.*\\['ch'\\]"):
        apply_device_transform(_ws(np.zeros((2, 1, 16)), layout=other), DeviceTransform())
    with pytest.raises(DataError, match="sample rate"):
        apply_device_transform(_ws(np.zeros((2, 6, 16)), rate=float("nan")), DeviceTransform(acc_drift=0.1))


# ---- config ------------------------------------------------------------------------------------------


def test_builds_from_config_mappings():
    path = "continual.stages[1].transform"
    fields = {"name": "phone-b", "sample_rate": 25, "axes": "y,x,-z", "rotate_deg": [0, 0, 90],
              "acc_scale": [1, 1.02, 0.98], "gyro_bias": [0.01, 0, 0], "acc_noise": 0.01}  # fmt: skip
    tr = from_dict(DeviceTransform, fields, path)
    assert tr.sample_rate == 25.0 and tr.rotate_deg == [0.0, 0.0, 90.0] and tr.acc_scale == [1.0, 1.02, 0.98]
    assert from_dict(DeviceTransform, {}, path) == DeviceTransform()
    assert from_dict(DeviceTransform, {"sample_rate": None}, path).sample_rate is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sample_rate": 0}, r"continual\.stages\[1\]\.transform\.sample_rate must be a positive"),
        ({"sample_rate": -5.0}, r"\.sample_rate must be a positive"),
        ({"rotate_deg": [0, 90]}, r"\.rotate_deg must list 3 finite numbers"),
        ({"acc_scale": [1, 1, 1, 1]}, r"\.acc_scale must list 3"),
        ({"gyro_bias": [0, 0]}, r"\.gyro_bias must list 3"),
        ({"acc_noise": -0.1}, r"\.acc_noise must be a number >= 0"),
        ({"gyro_drift": -1}, r"\.gyro_drift must be a number >= 0"),
        ({"axes": "x,x,z"}, r"\.axes must name x, y and z"),
        ({"axes": "x,y"}, r"\.axes must name x, y and z"),
        ({"name": ""}, r"\.name must be a non-empty"),
        ({"rotate_deg": "90"}, r"\.rotate_deg must be a list"),
        ({"acc_scale": [1, "a", 1]}, r"\.acc_scale\[1\] must be a number"),
        ({"noise": 0.1}, r"unknown config key `continual\.stages\[1\]\.transform\.noise`; did you mean"),
    ],
)
def test_bad_values_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(DeviceTransform, fields, "continual.stages[1].transform")


def test_validate_catches_values_set_in_code():
    with pytest.raises(ConfigError, match=r"device_transform\.acc_bias must list 3 finite numbers"):
        apply_device_transform(_random(), DeviceTransform(acc_bias=[0.0, float("nan"), 0.0]))
    with pytest.raises(ConfigError, match=r"stage\.sample_rate"):
        DeviceTransform(sample_rate=float("inf")).validate("stage")
