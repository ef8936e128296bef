"""The embedded ``synthetic`` dataset: physically plausible 6-axis IMU recordings generated from a seed.

Why it exists: the default demo and the tests need data that is present everywhere, small,
learnable, and has *controllable* domain shift (device model, body placement). It is not a
stand-in for real data: every recording it makes is tagged ``dataset="synthetic"``, its source
names the generator and seed, and the pipeline marks window sets made from it ``synthetic=True``.

The model (world frame: x up, y left, z forward; acceleration in g incl. gravity, gyro in rad/s):

* A body **segment** (trunk for the waist, thigh for a trouser pocket, forearm for the wrist) has
  a per-activity **posture**: a pitch about the lateral axis (positive tips the segment's top
  backward, lying supine is +90°) and a twist about its long axis (lying on the back vs the
  side). Static activities differ only by posture plus slow postural sway: sitting tilts the
  trunk back ~18° and turns the thigh horizontal, lying turns gravity by ~90°.
* Gait activities move the trunk with step-periodic accelerations (vertical and forward at the
  step frequency with 2nd/3rd harmonics, lateral sway at the stride frequency = half of it),
  trunk yaw/pitch/roll oscillations, and a heel-strike transient per step; stairs change
  cadence, amplitudes and lean, and walking downstairs has a strong landing impact.
* A **placement** adds a pendulum swing of the segment about the lateral axis at stride
  frequency (arm or leg swing) with its lever-arm (tangential and centripetal) accelerations,
  a motion gain, and the way the device is mounted on the segment (a rotation).
* Each **subject** has its own cadence, amplitude, swing, habitual lean and gait harmonics.
* A **device** turns the true specific force and angular rate into readings: axis convention
  (a signed axis permutation; ``acc_sign=-1`` reports like iOS CoreMotion, -1 g up at rest),
  per-axis scale error, bias, smooth drift and white noise, at its own sampling rate.

Accelerometers read specific force: the segment's acceleration minus gravity, i.e. +1 g up at
rest, expressed in the rotating sensor frame; the gyro reads the segment's body-frame angular
velocity. Both come from the same orientation trajectory, so gravity direction and gyro agree.

Every recording holds all six activities, ``seconds_per_activity`` each, in a seeded order,
separated by unlabelled ``transition_s`` cross-fades (not a simulated postural transition).
Randomness is keyed by (seed, subject) for subject traits and (seed, subject, device, placement)
for everything else, so adding a device or placement never changes the other recordings.

**The default spec** (an empty ``data.synthetic`` mapping) is 6 subjects × phone-a (50 Hz) ×
waist, 20 s per activity: 6 recordings of 134 s; at 50 Hz with 128-sample windows and 50 %
overlap, 13-14 windows fit wholly inside each bout, about 490 windows in all (492 for seed 0) —
small enough for a 5-minute federated demo on a 2-core CPU, large enough that a small model
separates the activities far above chance (tests/data/test_synthetic.py checks both).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedhar.config import from_dict
from fedhar.data.device_transform import axes_matrix
from fedhar.data.recording import IMU6, UNLABELLED, Recording, RecordingSet
from fedhar.errors import ConfigError

#: Bump when the generator's output changes for the same spec and seed.
GENERATOR_VERSION = 1

NAME = "synthetic"

#: The six basic activities, named and ordered as in UCI HAR / HAPT (label i is ACTIVITIES[i]).
ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")

SEGMENTS = ("trunk", "thigh", "forearm")


# ---- devices and placements ---------------------------------------------------------------


@dataclass
class Device:
    """A sensor model: rate, noise, calibration errors and axis convention (what differs between phones)."""

    name: str = "custom"
    sample_rate: float = 50.0  # Hz, the native rate recordings are generated at
    acc_noise: float = 0.01  # g, white noise std per sample
    gyro_noise: float = 0.01  # rad/s
    acc_drift: float = 0.005  # g, std of slow (< 0.1 Hz) bias wander
    gyro_drift: float = 0.003  # rad/s
    acc_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # g
    gyro_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # rad/s
    acc_scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # per-axis gain (scale error)
    gyro_scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    axes: str = "x,y,z"  # device axis i = this signed axis of the mounted sensor frame, e.g. "y,x,-z"
    acc_sign: float = 1.0  # -1: reports acceleration, not specific force (iOS: -1 g up at rest)

    def validate(self, path: str) -> None:
        if not self.sample_rate > 0:
            raise ConfigError(f"{path}.sample_rate must be positive (Hz), got {self.sample_rate}")
        for name in ("acc_noise", "gyro_noise", "acc_drift", "gyro_drift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("acc_bias", "gyro_bias", "acc_scale", "gyro_scale"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{path}.{name} must list 3 numbers (x, y, z), got {getattr(self, name)}")
        if self.acc_sign not in (1.0, -1.0):
            raise ConfigError(f"{path}.acc_sign must be 1 or -1, got {self.acc_sign}")
        axes_matrix(self.axes, f"{path}.axes")


@dataclass
class Placement:
    """Where and how the device sits on the body: segment, mounting rotation, motion gain and swing."""

    name: str = "custom"
    segment: str = "trunk"  # trunk | thigh | forearm: which posture table applies
    mount_deg: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # sensor→segment, about x, y, z
    mount_jitter_deg: float = 3.0  # per-recording wobble of the mounting (re-attached each time)
    gain: float = 1.0  # multiplies the trunk's translational gait acceleration
    swing_deg: float = 0.0  # pendulum swing amplitude about the lateral axis while walking
    lever_m: float = 0.0  # distance of the sensor from the swing's pivot (hip, shoulder)

    def validate(self, path: str) -> None:
        if self.segment not in SEGMENTS:
            raise ConfigError(f"{path}.segment must be one of {list(SEGMENTS)}, got `{self.segment}`")
        if len(self.mount_deg) != 3:
            raise ConfigError(f"{path}.mount_deg must list 3 angles (about x, y, z), got {self.mount_deg}")
        for name in ("mount_jitter_deg", "gain", "swing_deg", "lever_m"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name} must be >= 0, got {getattr(self, name)}")


#: Named devices. phone-a is close to HAPT's waist phone; phone-b reports like iOS with a
#: rotated axis frame, more noise and larger calibration errors; watch-c is a slow, noisy watch.
DEVICES: dict[str, Device] = {
    "phone-a": Device(
        "phone-a", 50.0, acc_noise=0.008, gyro_noise=0.008, acc_drift=0.004, gyro_drift=0.002,
        acc_bias=[0.01, -0.015, 0.02], gyro_bias=[0.002, -0.003, 0.001], acc_scale=[1.0, 1.01, 0.99],
    ),
    "phone-b": Device(
        "phone-b", 100.0, acc_noise=0.03, gyro_noise=0.03, acc_drift=0.01, gyro_drift=0.006,
        acc_bias=[-0.04, 0.03, 0.05], gyro_bias=[0.01, -0.008, 0.012], acc_scale=[1.03, 0.97, 1.02],
        gyro_scale=[1.02, 0.98, 1.01], axes="y,x,-z", acc_sign=-1.0,
    ),
    "watch-c": Device(
        "watch-c", 25.0, acc_noise=0.02, gyro_noise=0.02, acc_drift=0.008, gyro_drift=0.005,
        acc_bias=[0.02, 0.02, -0.03], gyro_bias=[-0.005, 0.004, 0.006], acc_scale=[0.98, 1.02, 1.0],
        axes="z,x,y",
    ),
}  # fmt: skip

#: Named placements. The pocket phone is upside down with its screen towards the thigh; the
#: watch face points sideways while the arm hangs.
PLACEMENTS: dict[str, Placement] = {
    "waist": Placement("waist", "trunk", [0.0, 0.0, 0.0], gain=1.0, swing_deg=0.0, lever_m=0.0),
    "pocket": Placement("pocket", "thigh", [0.0, 180.0, 0.0], gain=1.25, swing_deg=18.0, lever_m=0.25),
    "wrist": Placement("wrist", "forearm", [0.0, 0.0, 90.0], gain=0.8, swing_deg=25.0, lever_m=0.55),
}


# ---- the spec --------------------------------------------------------------------------


@dataclass
class SyntheticSpec:
    """What to generate: the fields of the ``data.synthetic`` config mapping."""

    subjects: int = 6  # subjects "1".."N"
    devices: list[str] = field(default_factory=lambda: ["phone-a"])
    placements: list[str] = field(default_factory=lambda: ["waist"])
    # explicit [subject, device, placement] triples; when set, replaces subjects × devices × placements
    recordings: list[list[str]] | None = None
    seconds_per_activity: float = 20.0
    transition_s: float = 2.0  # unlabelled cross-fade between activities (and before/after)
    subject_variability: float = 1.0  # spread of per-subject traits (0: every subject walks alike)
    custom_devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → Device fields (+ `base`)
    custom_placements: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → Placement fields

    _path = "data.synthetic"  # config path for error messages (a class attribute, not a config key)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, path: str = "data.synthetic") -> "SyntheticSpec":
        """Build and validate from a config mapping; unknown keys fail with a suggestion."""
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path} must be a mapping of SyntheticSpec fields, got {data!r}")
        return from_dict(cls, dict(data or {}), path)

    def validate(self, path: str) -> None:
        self._path = path
        if self.subjects < 1:
            raise ConfigError(f"{path}.subjects must be >= 1, got {self.subjects}")
        if self.seconds_per_activity < 1:
            raise ConfigError(f"{path}.seconds_per_activity must be at least 1 s, got {self.seconds_per_activity}")
        if self.transition_s < 0:
            raise ConfigError(f"{path}.transition_s must be >= 0, got {self.transition_s}")
        if self.subject_variability < 0:
            raise ConfigError(f"{path}.subject_variability must be >= 0, got {self.subject_variability}")
        self.device_table()
        self.placement_table()
        self.triples()

    def device_table(self) -> dict[str, Device]:
        """Presets plus custom devices (a custom entry named like a preset overrides its fields)."""
        return _with_custom(DEVICES, self.custom_devices, Device, f"{self._path}.custom_devices")

    def placement_table(self) -> dict[str, Placement]:
        return _with_custom(PLACEMENTS, self.custom_placements, Placement, f"{self._path}.custom_placements")

    def triples(self) -> list[tuple[str, str, str]]:
        """Every (subject, device, placement) to record, in generation order."""
        devices, placements = self.device_table(), self.placement_table()
        if self.recordings is not None:
            if not self.recordings:
                raise ConfigError(
                    f"{self._path}.recordings is empty; list [subject, device, placement] triples or drop it"
                )
            triples = []
            for i, item in enumerate(self.recordings):
                where = f"{self._path}.recordings[{i}]"
                if len(item) != 3:
                    raise ConfigError(f"{where} must be [subject, device, placement], got {item}")
                subject, device, placement = (str(v) for v in item)
                if not subject.isdecimal() or int(subject) < 1:
                    raise ConfigError(f"{where}: subject must be a positive integer, got `{subject}`")
                triples.append((str(int(subject)), device, placement))
            if len(set(triples)) != len(triples):
                raise ConfigError(f"{self._path}.recordings lists a (subject, device, placement) triple twice")
        else:
            if not self.devices or not self.placements:
                raise ConfigError(f"{self._path}.devices and .placements must each name at least one")
            triples = [
                (str(s), d, p) for s in range(1, self.subjects + 1) for d in self.devices for p in self.placements
            ]
        for _, d, p in triples:
            if d not in devices:
                raise ConfigError(
                    f"{self._path}: unknown device `{d}`; known: {sorted(devices)} (or add custom_devices.{d})"
                )
            if p not in placements:
                raise ConfigError(
                    f"{self._path}: unknown placement `{p}`; known: {sorted(placements)} (or add custom_placements.{p})"
                )
        return triples


def _with_custom(presets: dict, custom: dict[str, dict[str, Any]], cls: type, path: str) -> dict:
    """Presets plus custom entries; each entry starts from `base` (or the preset of its name, or defaults)."""
    table = dict(presets)
    for name, fields in custom.items():
        where = f"{path}.{name}"
        if not isinstance(fields, dict):
            raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {fields!r}")
        fields = dict(fields)
        base_name = fields.pop("base", name if name in presets else None)
        if base_name is not None and base_name not in presets:
            raise ConfigError(f"{where}.base `{base_name}` is not a preset; known: {sorted(presets)}")
        start = dataclasses.asdict(presets[base_name]) if base_name else {}
        table[name] = from_dict(cls, {**start, **fields, "name": name}, where)
    return table


# ---- activities: motion and posture tables -------------------------------------------------


@dataclass(frozen=True)
class Motion:
    """How an activity moves the trunk, before subject and placement scaling (g and degrees)."""

    cadence: float  # × the subject's walking step frequency (0: a static posture)
    vertical_g: float  # vertical acceleration amplitude at the step frequency
    forward_g: float
    lateral_g: float  # at the stride frequency
    impact_g: float  # heel-strike transient per step
    trunk_deg: tuple[float, float, float]  # yaw (stride), pitch (step), roll (stride) oscillation
    swing: float  # × the placement's swing amplitude (arms and legs swing less on stairs)
    sway_g: float  # slow irregular translational motion
    sway_deg: float  # slow irregular rotation


MOTIONS = {
    "WALKING": Motion(1.0, 0.30, 0.16, 0.14, 0.15, (6.0, 3.0, 5.0), 1.0, 0.02, 1.5),
    "WALKING_UPSTAIRS": Motion(0.85, 0.28, 0.18, 0.14, 0.06, (5.0, 4.0, 5.0), 0.7, 0.02, 1.5),
    "WALKING_DOWNSTAIRS": Motion(1.12, 0.38, 0.14, 0.14, 0.90, (7.0, 3.0, 6.0), 0.8, 0.02, 1.5),
    "SITTING": Motion(0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0, 0.0), 0.0, 0.004, 0.4),
    "STANDING": Motion(0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0, 0.0), 0.0, 0.008, 0.8),
    "LAYING": Motion(0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0, 0.0), 0.0, 0.003, 0.3),
}

#: segment → activity → (pitch mean, pitch sd, twist mean, twist sd) in degrees, drawn per bout.
#: Pitch +90 is horizontal with the front up; on the thigh, sitting and lying look alike except
#: for the twist (a known ambiguity of thigh sensors).
POSTURES = {
    "trunk": {
        "WALKING": (-3, 2, 0, 3), "WALKING_UPSTAIRS": (-10, 3, 0, 3), "WALKING_DOWNSTAIRS": (3, 2, 0, 3),
        "SITTING": (18, 5, 0, 6), "STANDING": (0, 2, 0, 3), "LAYING": (90, 6, 0, 35),
    },
    "thigh": {
        "WALKING": (5, 3, 0, 5), "WALKING_UPSTAIRS": (15, 4, 0, 5), "WALKING_DOWNSTAIRS": (5, 3, 0, 5),
        "SITTING": (85, 5, 0, 10), "STANDING": (0, 3, 0, 4), "LAYING": (90, 5, 0, 35),
    },
    "forearm": {
        "WALKING": (5, 5, 0, 10), "WALKING_UPSTAIRS": (30, 10, 0, 15), "WALKING_DOWNSTAIRS": (30, 10, 0, 15),
        "SITTING": (75, 10, 0, 30), "STANDING": (10, 6, 0, 10), "LAYING": (90, 8, 0, 40),
    },
}  # fmt: skip


@dataclass(frozen=True)
class Subject:
    """Per-subject gait traits, the same on every device and placement of that subject."""

    cadence_hz: float  # walking step frequency
    amplitude: float  # gait acceleration multiplier
    swing: float  # arm/leg swing multiplier
    lean_deg: float  # habitual trunk pitch
    harmonics: tuple[float, float, float]  # relative weights of the step harmonics
    phases: np.ndarray  # [4, 3]: vertical, forward, lateral and rotation phases (radians)


def subject_traits(seed: int, subject: str, variability: float = 1.0) -> Subject:
    rng = np.random.default_rng([seed % 2**32, 1, _key(subject)])
    v = variability
    return Subject(
        cadence_hz=float(np.clip(1.75 + v * 0.1 * rng.standard_normal(), 1.5, 2.2)),
        amplitude=float(np.exp(v * 0.15 * rng.standard_normal())),
        swing=float(np.exp(v * 0.2 * rng.standard_normal())),
        lean_deg=float(v * 3.0 * rng.standard_normal()),
        harmonics=(1.0, 0.38 + v * rng.uniform(-0.12, 0.12), 0.14 + v * rng.uniform(-0.06, 0.06)),
        phases=np.array([[0.0, 0.6, 1.2], [1.6, 2.2, 0.4], [0.3, 1.9, 0.0], [0.0, 0.8, 1.6]])
        + v * rng.uniform(-np.pi / 4, np.pi / 4, (4, 3)),
    )


def _key(name: str) -> int:
    """A stable integer for a name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


# ---- signal synthesis --------------------------------------------------------------------


def _smooth(rng: np.random.Generator, t: np.ndarray, f_lo: float, f_hi: float, k: int = 6):
    """Unit-variance band-limited noise (a sum of random sinusoids) and its time derivative."""
    freqs = np.exp(rng.uniform(np.log(f_lo), np.log(f_hi), k))
    phases = rng.uniform(0, 2 * np.pi, k)
    arg = 2 * np.pi * freqs[None, :] * t[:, None] + phases
    amp = np.sqrt(2.0 / k)
    return amp * np.sin(arg).sum(1), amp * (2 * np.pi * freqs * np.cos(arg)).sum(1)


def _axis_rotations(axis: int, angle: np.ndarray) -> np.ndarray:
    """[T, 3, 3] rotations by ``angle`` (radians) about coordinate axis 0, 1 or 2."""
    c, s = np.cos(angle), np.sin(angle)
    r = np.zeros((len(angle), 3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[:, axis, axis] = 1.0
    r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
    return r


def _chain(factors: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Orientation ``R = F1 F2 … Fn`` (segment → world) and the body-frame angular velocity.

    Each factor is (axis, angle [T], angle rate [T]); ω_body = Σ_i (F_{i+1}…F_n)ᵀ e_i θ̇_i.
    """
    n = len(factors[0][1])
    suffix = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    omega = np.zeros((n, 3))
    for axis, angle, rate in reversed(factors):
        omega += suffix[:, axis, :] * rate[:, None]  # row `axis` of suffix = suffixᵀ e_axis
        suffix = _axis_rotations(axis, angle) @ suffix
    return suffix, omega


def _bout(activity: str, n: int, fs: float, subj: Subject, place: Placement, rng: np.random.Generator):
    """One activity bout: specific force (g) and angular velocity (rad/s) in the segment frame."""
    motion = MOTIONS[activity]
    t = np.arange(n) / fs
    zeros = np.zeros(n)
    pitch_mu, pitch_sd, twist_mu, twist_sd = POSTURES[place.segment][activity]
    lean = subj.lean_deg if place.segment == "trunk" else 0.0
    pitch = np.radians(pitch_mu + lean + pitch_sd * rng.standard_normal())
    twist = np.radians(twist_mu + twist_sd * rng.standard_normal())

    if motion.cadence > 0:
        freq = subj.cadence_hz * motion.cadence * (1 + 0.03 * _smooth(rng, t, 0.02, 0.2)[0])
        psi = 2 * np.pi * np.cumsum(freq) / fs + rng.uniform(0, 2 * np.pi)  # step phase
        dpsi = 2 * np.pi * freq
    else:
        psi, dpsi = zeros, zeros

    def osc(amp_deg: float, mult: float, phase: float) -> tuple[np.ndarray, np.ndarray]:
        a = np.radians(amp_deg)
        return a * np.sin(mult * psi + phase), a * mult * dpsi * np.cos(mult * psi + phase)

    yaw_amp, pitch_amp, roll_amp = motion.trunk_deg
    phase = subj.phases[3]
    # trunk yaw (about up) and roll (about forward) at stride, pitch (about lateral) at step frequency
    trunk = ((0, yaw_amp, 0.5, phase[0]), (2, roll_amp, 0.5, phase[1]), (1, pitch_amp, 1.0, phase[2]))
    sway_rad = np.radians(motion.sway_deg)
    channels = []
    for axis, amp, mult, ph0 in trunk:
        gait, gait_rate = osc(amp, mult, ph0)
        sway, sway_rate = _smooth(rng, t, 0.05, 0.8)
        channels.append((axis, gait + sway_rad * sway, gait_rate + sway_rad * sway_rate))
    swing, swing_rate = osc(place.swing_deg * subj.swing * motion.swing, 0.5, 0.0)
    R, omega = _chain(
        [*channels, (1, swing, swing_rate), (1, np.full(n, pitch), zeros), (0, np.full(n, twist), zeros)]
    )

    # translational acceleration of the trunk (world frame, g)
    gain = subj.amplitude * place.gain
    h = subj.harmonics
    ph = subj.phases
    up = sum(h[k] * np.cos((k + 1) * psi + ph[0, k]) for k in range(3)) * motion.vertical_g
    fwd = sum(h[k] * np.cos((k + 1) * psi + ph[1, k]) for k in range(3)) * motion.forward_g
    lat = (np.cos(0.5 * psi + ph[2, 0]) + 0.3 * np.cos(psi + ph[2, 1])) * motion.lateral_g
    if motion.impact_g > 0:
        since_step = np.mod(psi, 2 * np.pi) / np.maximum(dpsi, 1e-9)  # seconds since the last foot contact
        pulse = motion.impact_g * np.exp(-since_step / 0.05) * np.sin(2 * np.pi * 6.0 * since_step)
        up, fwd = up + pulse, fwd - 0.3 * pulse
    accel = gain * np.stack([up, lat, fwd], axis=1)
    accel += motion.sway_g * np.stack([_smooth(rng, t, 0.1, 1.0)[0] for _ in range(3)], axis=1)
    accel[:, 0] += 1.0  # specific force: +1 g up at rest
    force = np.einsum("tji,tj->ti", R, accel)  # world → segment frame (Rᵀ v)

    if place.lever_m > 0:  # sensor below the pivot along the segment's long axis
        r = np.array([-place.lever_m, 0.0, 0.0])
        alpha = np.gradient(omega, axis=0) * fs
        lever = np.cross(alpha, r) + np.cross(omega, np.cross(omega, r))
        force += lever / 9.80665
    return force, omega


def _recording(
    subj: Subject, device: Device, place: Placement, spec: SyntheticSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """All six activities in a seeded order, cross-faded through unlabelled transitions, as the device reads them."""
    fs = device.sample_rate
    n_act = int(round(spec.seconds_per_activity * fs))
    n_gap = int(round(spec.transition_s * fs))
    order = rng.permutation(len(ACTIVITIES))
    total = n_gap + len(order) * (n_act + n_gap)
    force, omega = np.zeros((total, 3)), np.zeros((total, 3))
    labels = np.full(total, UNLABELLED, dtype=np.int64)
    fade_in = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n_gap) + 0.5) / max(n_gap, 1))
    for i, label in enumerate(order):
        start = i * (n_act + n_gap)
        f, w = _bout(ACTIVITIES[label], n_act + 2 * n_gap, fs, subj, place, rng)
        weight = np.ones(n_act + 2 * n_gap)
        if i > 0:
            weight[:n_gap] = fade_in
        if i < len(order) - 1:
            weight[n_act + n_gap :] = fade_in[::-1]
        force[start : start + len(weight)] += f * weight[:, None]
        omega[start : start + len(weight)] += w * weight[:, None]
        labels[start + n_gap : start + n_gap + n_act] = label

    jitter = place.mount_jitter_deg * rng.standard_normal(3)
    mount = _mount(np.asarray(place.mount_deg) + jitter)
    sensor_force, sensor_omega = force @ mount, omega @ mount  # (Mᵀ v) for every row v
    axes = axes_matrix(device.axes)
    t = np.arange(total) / fs
    acc = device.acc_sign * (sensor_force @ axes.T) * np.asarray(device.acc_scale) + np.asarray(device.acc_bias)
    gyro = (sensor_omega @ axes.T) * np.asarray(device.gyro_scale) + np.asarray(device.gyro_bias)
    sensors = ((acc, device.acc_drift, device.acc_noise), (gyro, device.gyro_drift, device.gyro_noise))
    for values, drift, noise in sensors:
        values += drift * np.stack([_smooth(rng, t, 0.005, 0.1)[0] for _ in range(3)], axis=1)
        values += noise * rng.standard_normal(values.shape)
    return np.concatenate([acc, gyro], axis=1).astype(np.float32), labels


def _mount(angles_deg: np.ndarray) -> np.ndarray:
    """Sensor → segment rotation Rx Ry Rz from angles about the segment's x, y, z axes."""
    rx, ry, rz = (_axis_rotations(a, np.radians([angle]))[0] for a, angle in enumerate(angles_deg))
    return rx @ ry @ rz


def generate(spec: SyntheticSpec, seed: int = 0) -> RecordingSet:
    """Recordings for every (subject, device, placement) of ``spec``, each at its device's native rate."""
    spec.validate(spec._path)
    devices, placements = spec.device_table(), spec.placement_table()
    recordings = []
    for subject, device_name, placement_name in spec.triples():
        device, place = devices[device_name], placements[placement_name]
        subj = subject_traits(seed, subject, spec.subject_variability)
        rng = np.random.default_rng([seed % 2**32, 2, _key(subject), _key(device_name), _key(placement_name)])
        signal, labels = _recording(subj, device, place, spec, rng)
        recordings.append(
            Recording(
                signal=signal,
                labels=labels,
                sample_rate=device.sample_rate,
                subject=subject,
                session=f"s{int(subject):02d}-{device_name}-{placement_name}",
                dataset=NAME,
                device=device_name,
                placement=placement_name,
                layout=IMU6,
                source=f"synthetic (fedhar.data.synthetic v{GENERATOR_VERSION}, seed {seed}; not real data)",
            )
        )
    return RecordingSet(recordings, list(ACTIVITIES), NAME)
