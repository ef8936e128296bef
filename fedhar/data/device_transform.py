"""A simulated second device: what a dataset recorded with one IMU would look like on another.

Continual adaptation (``continual.stages[i].transform``) uses it to make "a new phone" out of
windows recorded with one device. The effects are physical, in the order a real device applies
them to the motion it senses:

1. **frame**: the new sensor is mounted rotated by ``rotate_deg`` about x, y, z (the same
   convention as ``fedhar.data.synthetic``'s ``Placement.mount_deg``: the new sensor's axes are
   the old ones rotated by ``M = Rx Ry Rz``, so a vector ``v`` reads as ``Mᵀ v``), then reports in
   its own axis convention ``axes`` (a signed axis permutation ``P`` as in ``Device.axes``, e.g.
   ``"y,x,-z"``): ``v_device = P Mᵀ v``. Accelerometer and gyroscope share the body, so both
   triples get the same ``P Mᵀ``;
2. **calibration**: per-axis gain ``*_scale`` and constant offset ``*_bias`` (g, rad/s);
3. **drift**: a slow bias wander (a sum of random sinusoids of 0.005..0.1 Hz, std ``*_drift``),
   a function of time within its recording (``start_s`` + the sample's offset), seeded by
   (seed, recording): consecutive windows of one recording see one continuous drift;
4. **sampling** at the device's ``sample_rate``: anti-aliased decimation
   (``scipy.signal.resample_poly``, a polyphase Kaiser low-pass) of each window, odd-extended at
   both edges so the filter does not ring there, then back onto the windows' rate by linear
   interpolation, which is how fedhar's pipeline resamples a recording (``resample_recording``):
   content above the device's Nyquist frequency is lost. The device samples on one grid per
   recording (``start_s`` places each window on it), so overlapping windows share device samples and
   away from their edges equal what the pipeline makes of the whole recording sampled by the device.
   A device at least as fast as the windows changes nothing here (the windows hold nothing above
   their own Nyquist);
5. **noise**: white noise of std ``*_noise`` per *device* sample (how an IMU's noise is stated:
   on its output samples). Without resampling that is per window sample; with it, the noise is
   added to the device's samples before the interpolation, so it is band-limited like the device's
   data and its per-sample std is ``*_noise`` at the device's sample instants.

Only the ``acc`` and ``gyro`` groups change (each must have 3 channels); other channels (a
magnetometer, anything else) pass through unchanged, resampling included.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from fedhar.data.windows import WindowSet
from fedhar.errors import ConfigError, DataError

#: band of the drift's random sinusoids (Hz) and their number per axis, as in fedhar.data.synthetic
DRIFT_BAND_HZ = (0.005, 0.1)
DRIFT_TERMS = 6
#: largest denominator of the device / window rate ratio (rates are taken to 1/1000 of the window rate)
MAX_RATIO_DENOMINATOR = 1000

_SENSORS = ("acc", "gyro")


@dataclass
class DeviceTransform:
    """A simulated device: its tag, sampling rate, axis frame, mounting, gain, bias, drift and noise."""

    name: str = "device-b"  # device tag of every transformed window
    sample_rate: float | None = None  # Hz the device records at (None: the windows' rate, unchanged)
    axes: str = "x,y,z"  # device axis i = this signed axis of the mounted sensor frame (acc and gyro alike)
    rotate_deg: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # mounting rotation about x, y, z
    acc_scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # per-axis gain error
    gyro_scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    acc_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # g
    gyro_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # rad/s
    acc_drift: float = 0.0  # g, std of a slow (< 0.1 Hz) bias wander within a recording
    gyro_drift: float = 0.0  # rad/s
    acc_noise: float = 0.0  # g, white noise std per device sample
    gyro_noise: float = 0.0  # rad/s

    def validate(self, path: str) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"{path}.name must be a non-empty device tag, got {self.name!r}")
        if self.sample_rate is not None and not (_is_number(self.sample_rate) and self.sample_rate > 0):
            raise ConfigError(f"{path}.sample_rate must be a positive number of Hz (or null: the windows' rate), "
                              f"got {self.sample_rate!r}")  # fmt: skip
        for key in ("rotate_deg", "acc_scale", "gyro_scale", "acc_bias", "gyro_bias"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_is_number(v) for v in value):
                raise ConfigError(f"{path}.{key} must list 3 finite numbers (x, y, z), got {value!r}")
        for key in ("acc_drift", "gyro_drift", "acc_noise", "gyro_noise"):
            value = getattr(self, key)
            if not (_is_number(value) and value >= 0):
                raise ConfigError(f"{path}.{key} must be a number >= 0, got {value!r}")
        if not isinstance(self.axes, str):
            raise ConfigError(f"{path}.axes must be a string such as `y,x,-z`, got {self.axes!r}")
        axes_matrix(self.axes, f"{path}.axes")

    def frame(self) -> np.ndarray:
        """``P Mᵀ``: old sensor frame → this device's frame (the same for acc and gyro)."""
        rx, ry, rz = (_axis_rotation(axis, math.radians(a)) for axis, a in enumerate(self.rotate_deg))
        return axes_matrix(self.axes, "axes") @ (rx @ ry @ rz).T


def apply_device_transform(ws: WindowSet, transform: DeviceTransform, seed: int = 0) -> WindowSet:
    """``ws`` as ``transform``'s device would have recorded it: same shape, labels and tags, device = its name.

    Deterministic for a given seed; the input is not changed. Drift is keyed by (seed, recording), the
    noise by the seed, so another seed gives another device instance of the same model."""
    transform.validate("device_transform")
    n, _, length = ws.x.shape
    rate = float(ws.sample_rate)
    groups = ws.layout.group_dict
    for g in _SENSORS:
        if g in groups and len(groups[g]) != 3:
            raise DataError(f"the device transform needs 3 channels (x, y, z) in sensor group `{g}`, the windows have "
                            f"{len(groups[g])}: {[ws.layout.channels[i] for i in groups[g]]}")  # fmt: skip
    if not any(g in groups for g in _SENSORS):
        raise DataError(f"the device transform changes the `acc` and `gyro` sensor groups; the windows have only "
                        f"{list(groups)}")  # fmt: skip
    sensed = sorted(i for g in _SENSORS for i in groups.get(g, []))
    resample = transform.sample_rate is not None and transform.sample_rate < rate
    timed = transform.acc_drift > 0 or transform.gyro_drift > 0 or resample
    if timed and not (math.isfinite(rate) and rate > 0):
        raise DataError(f"the windows have no valid sample rate ({ws.sample_rate}); the device transform's drift and "
                        "resampling need one: save the windows with their rate (WindowSet.save)")  # fmt: skip

    x = ws.x.astype(np.float64)  # a copy: the input stays as it was
    frame = transform.frame()
    noise_std = np.zeros(ws.num_channels)
    if n:
        offsets = np.arange(length) / rate if timed else None
        recordings = _recording_index(ws) if (transform.acc_drift > 0 or transform.gyro_drift > 0) else None
        for k, g in enumerate(_SENSORS):
            if g not in groups:
                continue
            idx = _xyz_order(ws, groups[g])
            triple = np.einsum("ij,njt->nit", frame, x[:, idx, :])
            triple = triple * np.asarray(getattr(transform, f"{g}_scale"), float)[None, :, None]
            triple += np.asarray(getattr(transform, f"{g}_bias"), float)[None, :, None]
            drift = float(getattr(transform, f"{g}_drift"))
            if drift > 0:
                triple += drift * _drift(seed, k, recordings, ws.start_s.astype(np.float64), offsets)
            x[:, idx, :] = triple
            noise_std[idx] = float(getattr(transform, f"{g}_noise"))
    rng = np.random.default_rng([seed % 2**32, 0x6E6F, 1])  # noise, independent of the drift's streams
    if n and resample:
        start = np.rint(ws.start_s * rate).astype(np.int64)  # each window's first sample within its recording
        x[:, sensed] = _sample(x[:, sensed], start, rate, float(transform.sample_rate), noise_std[sensed], rng)
    elif n and noise_std.any():
        x += noise_std[None, :, None] * rng.standard_normal(x.shape)

    notes = dict(ws.notes)
    notes["device_transform"] = dataclasses.asdict(transform)
    return WindowSet(
        x=x.astype(np.float32),
        y=ws.y.copy(),
        label_names=list(ws.label_names),
        layout=ws.layout,
        sample_rate=ws.sample_rate,
        subject=ws.subject.copy(),
        dataset=ws.dataset.copy(),
        device=np.full(n, transform.name).astype(str),
        placement=ws.placement.copy(),
        session=ws.session.copy(),
        start_s=ws.start_s.copy(),
        synthetic=ws.synthetic,
        notes=notes,
    )


# ---- pieces -------------------------------------------------------------------------------------


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def axes_matrix(axes: str, path: str = "axes") -> np.ndarray:
    """Signed permutation ``P`` with ``device = P @ sensor`` from e.g. ``"y,x,-z"``."""
    parts = [p.strip().lower() for p in axes.split(",")]
    names = [p.lstrip("+-") for p in parts]
    if len(parts) != 3 or sorted(names) != ["x", "y", "z"]:
        raise ConfigError(f"{path} must name x, y and z once each with optional signs (e.g. `y,x,-z`), got `{axes}`")
    matrix = np.zeros((3, 3))
    for row, (part, name) in enumerate(zip(parts, names)):
        matrix[row, "xyz".index(name)] = -1.0 if part.startswith("-") else 1.0
    return matrix


def _axis_rotation(axis: int, angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about coordinate axis 0, 1 or 2 (right-handed)."""
    c, s = math.cos(angle), math.sin(angle)
    r = np.eye(3)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _xyz_order(ws: WindowSet, idx: list[int]) -> list[int]:
    """A group's channel indices in x, y, z order (by their names' last letter when those are x, y, z)."""
    ends = [ws.layout.channels[i].lower()[-1:] for i in idx]
    if sorted(ends) == ["x", "y", "z"]:
        return [idx[ends.index(a)] for a in "xyz"]
    return list(idx)


def _recording_index(ws: WindowSet) -> tuple[np.ndarray, list[str]]:
    """Each window's recording (position in the list of distinct recordings) and those recordings' keys.

    A recording is (dataset, subject, device, placement, session): session names alone repeat across
    subjects in several datasets (MotionSense's ``wlk_7``)."""
    keys = np.asarray(["\x1f".join(k) for k in zip(ws.dataset, ws.subject, ws.device, ws.placement, ws.session)])
    unique, inverse = np.unique(keys, return_inverse=True)
    return inverse.reshape(-1), unique.tolist()


def _drift(seed: int, sensor: int, recordings: tuple[np.ndarray, list[str]], start_s: np.ndarray,
           offsets: np.ndarray) -> np.ndarray:
    """[N, 3, T] unit-variance slow wander at times ``start_s[n] + offsets[t]`` of each window's recording.

    Per recording and axis a sum of ``DRIFT_TERMS`` sinusoids of random frequency (log-uniform in
    ``DRIFT_BAND_HZ``) and phase; ``sin(w (t0 + s) + ph)`` is split into the window's phase ``w t0 + ph`` and
    the offset's ``w s`` so that the work is per recording, not per window and sample."""
    inverse, keys = recordings
    lo, hi = DRIFT_BAND_HZ
    out = np.empty((len(start_s), 3, len(offsets)))
    amp = math.sqrt(2.0 / DRIFT_TERMS)
    for r, key in enumerate(keys):
        rng = np.random.default_rng([seed % 2**32, 0x6472, sensor, zlib.crc32(key.encode())])
        omega = 2 * np.pi * np.exp(rng.uniform(np.log(lo), np.log(hi), (3, DRIFT_TERMS)))
        phase = rng.uniform(0, 2 * np.pi, (3, DRIFT_TERMS))
        rows = np.flatnonzero(inverse == r)
        start = omega[None] * start_s[rows, None, None] + phase[None]  # [n, 3, K]
        along = omega[:, :, None] * offsets[None, None, :]  # [3, K, T]
        out[rows] = amp * (np.einsum("nak,akt->nat", np.sin(start), np.cos(along))
                           + np.einsum("nak,akt->nat", np.cos(start), np.sin(along)))  # fmt: skip
    return out


def _sample(x: np.ndarray, start: np.ndarray, rate: float, device_rate: float, noise_std: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """Windows [N, C, T] at ``rate`` recorded by a device at ``device_rate`` < ``rate``, back at ``rate``.

    The device samples its recording at ``m / device_rate`` seconds; window sample k of a window that starts
    at recording sample ``start`` is at ``(start + k) / rate``. With ``device_rate / rate = p / q``, device
    sample m sits at recording sample ``m q / p``: each window is odd-extended so that its padded start is on
    that grid (windows of one recording see the same device samples), decimated (anti-aliased) by p/q, given
    the device's noise on its samples, and interpolated back onto its own samples (fedhar's
    ``resample_recording``)."""
    from scipy.signal import resample_poly

    ratio = Fraction(device_rate / rate).limit_denominator(MAX_RATIO_DENOMINATOR)
    if ratio <= 0:
        ratio = Fraction(1, MAX_RATIO_DENOMINATOR)
    p, q = ratio.numerator, ratio.denominator
    length = x.shape[-1]
    # resample_poly's filter reaches 10 * max(p, q) taps of the p-times upsampled input either side (in window
    # samples 10 max(p, q) / p); a device period more keeps the interpolation's neighbours inside the extension
    pad = math.ceil((math.ceil(10 * max(p, q) / p) + math.ceil(q / p) + 1) / q) * q
    # the padded start (start - pad - shift) is on the device grid when shift = start mod q (pad is a multiple
    # of q, and p is invertible mod q)
    shift = np.mod(start, q)
    out = np.empty_like(x)
    for j in np.unique(shift).tolist():
        rows = np.flatnonzero(shift == j)
        padded = np.pad(x[rows], ((0, 0), (0, 0), (pad + j, pad + q - j)), mode="reflect", reflect_type="odd")
        dev = resample_poly(padded, p, q, axis=-1)  # device sample m at padded position m q / p
        if noise_std.any():
            dev += noise_std[None, :, None] * rng.standard_normal(dev.shape)
        num = (pad + j + np.arange(length)) * p  # window sample k at device position num / q
        lo = np.minimum(num // q, dev.shape[-1] - 2)
        w = (num - lo * q) / q
        out[rows] = dev[..., lo] * (1.0 - w) + dev[..., lo + 1] * w
    return out
