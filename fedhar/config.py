"""Typed experiment configs, read from YAML with ``key=value`` overrides.

Every run is reproducible from its resolved config (written next to its results) and seed.
Unknown keys and bad values fail early with the key's dotted path and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedhar.data.device_transform import DeviceTransform
from fedhar.errors import ConfigError


@dataclass
class SplitConfig:
    """Subject-disjoint split: explicit subject lists, a named split, or seeded fractions."""

    train: list[str] | None = None
    val: list[str] | None = None
    test: list[str] | None = None
    named: str | None = None  # e.g. "uci-har" (the official UCI-HAR test subjects)
    val_fraction: float = 0.15
    test_fraction: float = 0.2

    def validate(self, path: str) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ConfigError(f"{path}.{name} must be in [0, 1), got {v}")


@dataclass
class DataConfig:
    """Where the recordings are and how they become windows."""

    dataset: str = "synthetic"  # a loader name, or "auto" to detect the layout of `path`
    path: str | None = None
    # resample to this rate (Hz); null keeps the native rate. Loaders that put unpaired sensors on a grid
    # (hhar, realworld, wisdm) grid at it directly; generic CSVs without a time column need the rate they
    # were recorded at in loader_options (it is never assumed)
    sample_rate: float | None = 50.0
    window: int = 128  # samples per window
    overlap: float = 0.5
    # training subjects' windows cut at this overlap instead (denser: more, time-shifted training windows);
    # validation and test windows keep `overlap`, so the figures stay comparable. null: `overlap`
    train_overlap: float | None = None
    label_rule: str = "inside"  # inside | majority
    classes: list[str] | None = None  # keep these classes, in this order (null: all)
    label_map: dict[str, str] | None = None  # rename labels (applied after common_labels)
    common_labels: bool = False  # rename the dataset's labels onto fedhar's common activity set first
    labelled_per_class: int | None = None  # low-label protocol: keep k training windows per class
    labelled_percent: float | None = None  # low-label protocol: keep p % of training windows (stratified)
    # the labelled budget (labelled_per_class / labelled_percent) in a centralized run: false, of the pooled
    # training windows; true, per class and training subject, the very windows each client of a federation
    # partitioned by subject keeps. Federated runs always apply it per client, to each client's own windows
    labelled_per_subject: bool = False
    sensors: list[str] = field(default_factory=lambda: ["acc", "gyro"])
    normalize: bool = True  # per-channel standardisation fitted on training windows only
    # loaders with several IMUs (PAMAP2, RealWorld, SPAR...): which one, or a list of them, each read with
    # the loader's own placement option and joined into one set (every recording keeps the loader's tag)
    placement: str | list[str] | None = None
    # keyword options of the loader, e.g. generic {units: "acc=m/s^2", labels: [sit, walk], max_gap_s: 2,
    # sample_rate: 100 (the rate CSVs without a time column were recorded at)}, pamap2
    # {optional: true}; an option the loader does not have is an error that lists the ones it has
    loader_options: dict[str, Any] = field(default_factory=dict)
    split: SplitConfig = field(default_factory=SplitConfig)
    synthetic: dict[str, Any] = field(default_factory=dict)  # SyntheticSpec fields
    cache_dir: str | None = None  # default: $FEDHAR_WINDOW_CACHE or $FEDHAR_CACHE/windows

    def validate(self, path: str) -> None:
        if self.window < 8:
            raise ConfigError(f"{path}.window must be at least 8 samples, got {self.window}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"{path}.overlap must be in [0, 1), got {self.overlap}")
        if self.train_overlap is not None and not 0 <= self.train_overlap < 1:
            raise ConfigError(f"{path}.train_overlap must be in [0, 1) or null, got {self.train_overlap}")
        if self.label_rule not in ("inside", "majority"):
            raise ConfigError(f"{path}.label_rule must be `inside` or `majority`, got `{self.label_rule}`")
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise ConfigError(f"{path}.sample_rate must be positive or null, got {self.sample_rate}")
        if self.labelled_per_class is not None and self.labelled_percent is not None:
            raise ConfigError(f"{path}: set at most one of labelled_per_class and labelled_percent")
        if self.labelled_per_class is not None and self.labelled_per_class < 1:
            raise ConfigError(f"{path}.labelled_per_class must be >= 1, got {self.labelled_per_class}")
        if self.labelled_percent is not None and not 0 < self.labelled_percent <= 100:
            raise ConfigError(f"{path}.labelled_percent must be in (0, 100], got {self.labelled_percent}")
        if self.labelled_per_subject and self.labelled_per_class is None and self.labelled_percent is None:
            raise ConfigError(f"{path}.labelled_per_subject applies a labelled budget per subject: set "
                              f"{path}.labelled_per_class or {path}.labelled_percent too (or drop it)")  # fmt: skip
        if not self.sensors:
            raise ConfigError(f"{path}.sensors must name at least one sensor group (e.g. [acc, gyro])")
        if "placement" in self.loader_options:
            raise ConfigError(f"{path}.loader_options.placement: set {path}.placement instead")
        check_placement(self.placement, f"{path}.placement")


def check_placement(value: Any, field: str = "data.placement") -> None:
    """``data.placement``: null, one placement name, or a non-empty list of distinct names."""
    example = f"e.g. `{field}: waist`, or a list `{field}: [waist, forearm]`"
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field} must be a placement name or a list of them, got {value!r}; {example}")
    if not value:
        raise ConfigError(f"{field} is an empty list: name at least one placement ({example}), or set it to null "
                          "for the loader's default")  # fmt: skip
    for i, p in enumerate(value):
        if not isinstance(p, str) or not p.strip():
            raise ConfigError(f"{field}[{i}] must be a placement name, got {p!r} in {list(value)}; {example}")
    keys = [p.strip().lower() for p in value]  # the loaders read placement names case-blind
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"{field} lists {', '.join(f'`{k}`' for k in twice)} more than once in {list(value)}; "
                          "list each placement once")  # fmt: skip


@dataclass
class LoraConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] | None = None  # null: chosen per architecture
    freeze_a: bool = False  # FFA-LoRA: A stays at its seeded init, only B trains (and travels)

    def validate(self, path: str) -> None:
        if self.r < 1:
            raise ConfigError(f"{path}.r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{path}.dropout must be in [0, 1), got {self.dropout}")
        if not self.alpha > 0:
            raise ConfigError(f"{path}.alpha must be positive, got {self.alpha}")


@dataclass
class ModelConfig:
    """The HAR model: frontend → (LoRA-adapted frozen) backbone → pooling → head, or a baseline."""

    kind: str = "llm"  # llm | deepconvlstm | transformer
    backbone: str = "smollm2-135m"
    num_layers: int | None = 4  # keep the first N backbone blocks (null: all); 4 from the sweep
    # false: the backbone's architecture and shape with *randomly initialised* weights (seeded from the run's
    # seed), frozen and LoRA-adapted as usual: the control that says whether pretraining matters (llm kind)
    pretrained: bool = True
    finetune: str = "lora"  # lora | full | frozen
    tokens: int = 16  # tokens per window (the window is cut into this many patches)
    conv_channels: int = 64  # channels of each sensor group's conv stack
    conv_depth: int = 2
    kernel_size: int = 5
    stats_token: bool = False  # add a leading token of per-channel window mean/std (posture, intensity)
    pooling: str = "auto"  # mean | last | auto (last for causal decoders, mean for encoders)
    head_cues: bool = False  # the head also reads raw-window gravity direction + log sway (llm kind)
    dropout: float = 0.1
    lora: LoraConfig = field(default_factory=LoraConfig)
    # baselines
    hidden: int = 128  # DeepConvLSTM LSTM size / from-scratch Transformer width
    heads: int = 4
    depth: int = 4

    def validate(self, path: str) -> None:
        if self.kind not in ("llm", "deepconvlstm", "transformer"):
            raise ConfigError(f"{path}.kind must be llm, deepconvlstm or transformer, got `{self.kind}`")
        if self.finetune not in ("lora", "full", "frozen"):
            raise ConfigError(f"{path}.finetune must be lora, full or frozen, got `{self.finetune}`")
        if self.pooling not in ("mean", "last", "auto"):
            raise ConfigError(f"{path}.pooling must be mean, last or auto, got `{self.pooling}`")
        if self.tokens < 1:
            raise ConfigError(f"{path}.tokens must be >= 1, got {self.tokens}")
        if self.head_cues and self.kind != "llm":
            raise ConfigError(f"{path}.head_cues is an option of kind llm; set it false for kind `{self.kind}`")
        if not self.pretrained and self.kind != "llm":
            raise ConfigError(f"{path}.pretrained=false randomly initialises an LLM backbone, and kind `{self.kind}` "
                              f"has none (it always trains from scratch); set {path}.pretrained=true or kind llm")  # fmt: skip
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"{path}.num_layers must be >= 1 or null, got {self.num_layers}")
        for name in ("conv_channels", "conv_depth", "hidden", "heads", "depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be >= 1, got {getattr(self, name)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:  # "same" padding keeps the length only for odd kernels
            raise ConfigError(f"{path}.kernel_size must be odd and >= 1 (e.g. 5), got {self.kernel_size}")
        if self.kind == "transformer" and self.hidden % self.heads:
            raise ConfigError(f"{path}.hidden ({self.hidden}) must be a multiple of {path}.heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{path}.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class AugmentConfig:
    """Training-time augmentation of raw windows (off by default); see fedhar/training/augment.py."""

    rotation_degrees: float = 0.0  # random rigid rotation of the device frame, up to this angle
    scale_std: float = 0.0  # per-window, per-sensor-group amplitude scale 1 + N(0, scale_std)
    mixup_alpha: float = 0.0  # mixup (Zhang et al. 2018): batches mixed with weight ~ Beta(alpha, alpha), 0 = off

    @property
    def active(self) -> bool:
        """Whether windows are transformed one by one (rotation, scale); mixup is applied by the loop."""
        return self.rotation_degrees > 0 or self.scale_std > 0

    def validate(self, path: str) -> None:
        if not 0 <= self.rotation_degrees <= 180:
            raise ConfigError(f"{path}.rotation_degrees must be in [0, 180], got {self.rotation_degrees}")
        if not 0 <= self.scale_std < 1:
            raise ConfigError(f"{path}.scale_std must be in [0, 1), got {self.scale_std}")
        if not 0 <= self.mixup_alpha <= 10:
            raise ConfigError(f"{path}.mixup_alpha must be in [0, 10] (0 = off; 0.2 is usual), got {self.mixup_alpha}")


@dataclass
class TrainConfig:
    """The one local-training loop's settings (centralized training, clients, benchmarks)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    schedule: str = "cosine"  # cosine | constant (after warmup)
    grad_clip: float = 1.0
    patience: int = 5  # epochs without a better validation macro-F1 before stopping (0: never)
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights (e.g. 0.99)
    eval_batch_size: int = 256
    num_threads: int | None = None  # torch CPU threads (null: torch's default)
    max_steps_per_epoch: int | None = None
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # {name: ADAPTER, <its options>}: also fit this post-hoc adapter (fedhar/posthoc/, e.g. pair-calibration) on
    # the training windows, report it beside the per-window figures and store it with the checkpoint
    posthoc: dict[str, Any] | None = None
    # transfer: start from this checkpoint's trained tensors (a `fedhar train` / `simulate` run's checkpoint/):
    # frontend, LoRA adapters and norm carried over, the head too when the label set is the same, a new head
    # when it differs; the model settings must match the checkpoint's (fedhar.model.state.init_from_checkpoint)
    init_from: str | None = None

    def validate(self, path: str) -> None:
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError(f"{path}.init_from is empty: give a checkpoint folder (runs/<name>/checkpoint) or null")
        if self.posthoc is not None and not isinstance(self.posthoc.get("name"), str):
            raise ConfigError(f"{path}.posthoc needs a `name`: the post-hoc adapter to fit (fedhar/posthoc/), e.g. "
                              "{name: pair-calibration, classes: [SITTING, STANDING]}")  # fmt: skip
        if self.epochs < 1:
            raise ConfigError(f"{path}.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"{path}.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"{path}.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"{path}.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"{path}.ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.patience < 0:
            raise ConfigError(f"{path}.patience must be >= 0, got {self.patience}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"{path}.schedule must be cosine or constant, got `{self.schedule}`")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(f"{path}.weight_decay and grad_clip must be >= 0 (grad_clip 0: off), "
                              f"got {self.weight_decay} and {self.grad_clip}")  # fmt: skip
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{path}.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.eval_batch_size < 1:
            raise ConfigError(f"{path}.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        for name in ("max_steps_per_epoch", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"{path}.device must be auto, cpu or cuda[:N], got `{self.device}`")


#: every ``federated.strategy``: Flower's strategy classes, and fedhar's LoRA rules (fedhar/federated/aggregation.py)
STRATEGY_NAMES = ("fedavg", "fedavgm", "fedprox", "fedadagrad", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg",
                  "krum", "multikrum", "bulyan", "qfedavg", "ffa-lora", "lora-exact")  # fmt: skip
#: keys that moved: into ``federated.strategy_args`` (Flower's argument names), or to another section
MOVED_KEYS = {
    "federated.proximal_mu": "federated.strategy_args.proximal_mu (strategy fedprox)",
    "federated.server_lr": "federated.strategy_args.eta (fedadam / fedyogi / fedadagrad) or server_learning_rate (fedavgm)",
    "federated.server_beta1": "federated.strategy_args.beta_1", "federated.server_beta2": "federated.strategy_args.beta_2",
    "federated.server_tau": "federated.strategy_args.tau",
    "train.client_calibration": "train.posthoc={name: pair-calibration, classes: [FIRST, SECOND]}",
}  # fmt: skip
ATTACKS = ("sign-flip", "scale", "gaussian", "label-flip")


@dataclass
class DPConfig:
    """Central differential privacy by Flower's wrappers: every update's delta clipped to a norm (on the server,
    or on the device before it is sent), Gaussian noise of std ``noise_multiplier × norm / sampled clients`` on the
    mean, clients weighted equally (user-level DP)."""

    side: str = "server"  # server | client: where each update is clipped
    clipping: str = "fixed"  # fixed | adaptive (the norm follows a quantile of the updates' norms)
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0  # fixed: the norm; adaptive: the initial norm
    target_clipped_quantile: float = 0.5  # adaptive
    clip_norm_lr: float = 0.2  # adaptive
    delta: float | None = 1e-5  # fixed clipping: ε at this δ from Flower's RDP accountant, every round; null: off
    max_epsilon: float | None = None  # fixed clipping: the run stops cleanly before a round that would spend more

    def validate(self, path: str) -> None:
        if self.side not in ("server", "client"):
            raise ConfigError(f"{path}.side must be server or client, got `{self.side}`")
        if self.clipping not in ("fixed", "adaptive"):
            raise ConfigError(f"{path}.clipping must be fixed or adaptive, got `{self.clipping}`")
        if not self.noise_multiplier >= 0 or not self.clipping_norm > 0:
            raise ConfigError(f"{path}: noise_multiplier must be >= 0 and clipping_norm > 0, got "
                              f"{self.noise_multiplier} and {self.clipping_norm}")  # fmt: skip
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"{path}.delta must be in (0, 1) or null, got {self.delta}")
        if self.max_epsilon is not None and (self.clipping != "fixed" or self.delta is None or not self.max_epsilon > 0):
            raise ConfigError(f"{path}.max_epsilon must be positive and needs fixed clipping and {path}.delta (Flower "
                              "accounts ε for fixed clipping only)")  # fmt: skip
        if self.delta is not None and self.clipping == "fixed" and not self.noise_multiplier > 0:
            raise ConfigError(f"{path}: accounting ε (delta set) needs noise_multiplier > 0; set {path}.delta=null "
                              "to clip without noise")  # fmt: skip


@dataclass
class AttackConfig:
    """Simulated poisoning, for robustness benchmarks only: ``fedhar simulate`` applies it, ``fedhar server``
    refuses it, and a device's ``fedhar client`` has no code that reads it."""

    kind: str = "sign-flip"  # sign-flip | scale | gaussian | label-flip
    clients: float = 1  # how many clients attack: a count (>= 1) or a fraction of them (< 1), chosen seeded
    from_round: int = 1
    factor: float = 1.0  # sign-flip: the update becomes -factor × delta; scale: factor × delta
    std: float = 1.0  # gaussian: the update becomes Gaussian noise of this std around the global state

    def validate(self, path: str) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError(f"{path}.kind must be one of {list(ATTACKS)}, got `{self.kind}`")
        if not self.clients > 0 or (self.clients >= 1 and self.clients != int(self.clients)):
            raise ConfigError(f"{path}.clients must be a count >= 1 or a fraction in (0, 1), got {self.clients}")
        if self.from_round < 1 or not self.std > 0:
            raise ConfigError(f"{path}: from_round must be >= 1 and std > 0")
        if self.kind == "label-flip" and self.from_round != 1:
            raise ConfigError(f"{path}.from_round: label-flip poisons the attackers' data, from round 1")


@dataclass
class FederatedConfig:
    """Flower federation: strategy, rounds, clients, Ray resources."""

    strategy: str = "fedavg"  # one of STRATEGY_NAMES
    strategy_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the strategy's class
    rounds: int = 5
    local_epochs: int = 1
    fraction_train: float = 1.0
    # a fixed number of clients per round (cross-device: a few of a large population); null: fraction_train.
    # Set, a stage's set-up describes only the nodes a round samples (docs/federated.md, "Population scale")
    clients_per_round: int | None = None
    min_clients: int = 2
    partition: str = "subject"  # subject | dirichlet | device | placement | iid
    num_clients: int | None = None  # for dirichlet / iid
    alpha: float = 0.3  # Dirichlet concentration
    quantity_skew: float | None = None
    lr_decay: float = 1.0  # client lr multiplied by this each round (lr_schedule: exponential)
    lr_schedule: str = "exponential"  # per-round client lr: exponential (lr_decay) | cosine (over the rounds)
    client_val_fraction: float = 0.0  # local held-out share for client-side evaluation
    cpus_per_client: float = 1.0
    max_concurrent_clients: int | None = None  # local Ray only: caps the CPUs Ray may use
    ray_address: str | None = None  # attach to an existing Ray cluster
    round_timeout_s: float | None = None  # stop waiting for a round's replies after this long (null: all replies)
    client_wait_s: float = 120.0  # how long the server waits for min_clients connected clients (start, rounds)
    # a client's aggregation weight (and its share of the normaliser's moments) is at most this multiple of the
    # median window count the clients describe: a claimed count cannot take over the average; null: no cap
    max_weight_ratio: float | None = 10.0
    # an update whose distance from the global state (L2 norm of the delta) exceeds this multiple of the round's
    # median is clipped to it or rejected (update_norm_action); null: no bound
    update_norm_bound: float | None = 10.0
    update_norm_action: str = "clip"  # clip | reject
    dp: DPConfig | None = None  # differential privacy (Flower's DP wrappers)
    attack: AttackConfig | None = None  # simulated poisoning (fedhar simulate only)

    def validate(self, path: str) -> None:
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"{path}.strategy must be one of {list(STRATEGY_NAMES)}, got `{self.strategy}`")
        if self.rounds < 1:
            raise ConfigError(f"{path}.rounds must be >= 1, got {self.rounds}")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"{path}.fraction_train must be in (0, 1], got {self.fraction_train}")
        if self.clients_per_round is not None:
            if self.clients_per_round < 1:
                raise ConfigError(f"{path}.clients_per_round must be >= 1 or null, got {self.clients_per_round}")
            if self.fraction_train != 1.0:
                raise ConfigError(f"{path}.clients_per_round={self.clients_per_round} and {path}.fraction_train="
                                  f"{self.fraction_train} both say how many clients a round samples; "
                                  "set one")  # fmt: skip
            if self.clients_per_round < self.min_clients:
                raise ConfigError(f"{path}.clients_per_round={self.clients_per_round} is below {path}.min_clients="
                                  f"{self.min_clients}: no round could aggregate")  # fmt: skip
        if self.partition not in ("subject", "dirichlet", "device", "placement", "iid"):
            raise ConfigError(
                f"{path}.partition must be subject, dirichlet, device, placement or iid, got `{self.partition}`"
            )
        if self.alpha <= 0:
            raise ConfigError(f"{path}.alpha must be positive, got {self.alpha}")
        if self.local_epochs < 1:
            raise ConfigError(f"{path}.local_epochs must be >= 1, got {self.local_epochs}")
        if self.min_clients < 1:
            raise ConfigError(f"{path}.min_clients must be >= 1, got {self.min_clients}")
        if self.num_clients is not None and self.num_clients < 1:
            raise ConfigError(f"{path}.num_clients must be >= 1 or null, got {self.num_clients}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"{path}.lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.lr_schedule not in ("exponential", "cosine"):
            raise ConfigError(f"{path}.lr_schedule must be exponential or cosine, got `{self.lr_schedule}`")
        if not 0 <= self.client_val_fraction < 1:
            raise ConfigError(f"{path}.client_val_fraction must be in [0, 1), got {self.client_val_fraction}")
        if not self.cpus_per_client > 0:
            raise ConfigError(f"{path}.cpus_per_client must be positive, got {self.cpus_per_client}")
        if self.max_concurrent_clients is not None and self.max_concurrent_clients < 1:
            raise ConfigError(f"{path}.max_concurrent_clients must be >= 1 or null, got {self.max_concurrent_clients}")
        if self.round_timeout_s is not None and not self.round_timeout_s > 0:
            raise ConfigError(f"{path}.round_timeout_s must be positive or null, got {self.round_timeout_s}")
        if not self.client_wait_s > 0:
            raise ConfigError(f"{path}.client_wait_s must be positive, got {self.client_wait_s}")
        if self.update_norm_bound is not None and not self.update_norm_bound >= 1:
            raise ConfigError(f"{path}.update_norm_bound must be >= 1 (a multiple of the round's median update norm) "
                              f"or null (no bound), got {self.update_norm_bound}")  # fmt: skip
        if self.update_norm_action not in ("clip", "reject"):
            raise ConfigError(f"{path}.update_norm_action must be clip or reject, got `{self.update_norm_action}`")
        if self.max_weight_ratio is not None and not self.max_weight_ratio >= 1:
            raise ConfigError(f"{path}.max_weight_ratio must be >= 1 (a multiple of the median client's window count) "
                              f"or null (no cap), got {self.max_weight_ratio}")  # fmt: skip


CONTINUAL_METHODS = ("naive", "replay", "l2", "ewc", "olora", "joint")
EWC_IMPORTANCE = ("parameters", "product")  # continual.ewc_importance


@dataclass
class StageConfig:
    """One stage of a continual schedule: how many rounds, and what is true of the clients' data meanwhile.

    Every filter is over window tags (null: no filter). ``subjects`` picks the training subjects that take part
    (the held-out subjects are always the experiment's validation / test subjects); ``devices`` / ``placements``
    what they record with; ``classes`` the labels the stage has (class-incremental: windows of other classes are
    not labelled, so not trained on); ``transform`` a simulated second device (resampling, frame, gain, bias,
    drift, noise) for data recorded with one. The stage's *domain* is the held-out subjects' windows under the
    same device, placement, class and transform filters: the server scores every domain after every stage."""

    name: str | None = None  # default: stage-1, stage-2, ...
    rounds: int = 1
    subjects: list[str] | None = None
    devices: list[str] | None = None
    placements: list[str] | None = None
    classes: list[str] | None = None
    transform: DeviceTransform | None = None

    def validate(self, path: str) -> None:
        if self.rounds < 1:
            raise ConfigError(f"{path}.rounds must be >= 1, got {self.rounds}")
        for key in ("subjects", "devices", "placements", "classes"):
            if getattr(self, key) is not None and not getattr(self, key):
                raise ConfigError(f"{path}.{key} is empty: list at least one, or drop the key (no filter)")


@dataclass
class ContinualConfig:
    """Continual adaptation: an ordered schedule of stages (their rounds replace ``federated.rounds``) and the
    method against forgetting. See docs/continual.md."""

    stages: list[StageConfig] = field(default_factory=list)
    # naive: keep training (forgets) | replay: a bounded on-device buffer of the client's own past windows mixed
    # into its local training | l2: a pull toward the previous stage's global tensors | ewc: the same pull
    # weighted by a federated Fisher estimate | olora: a new LoRA adapter per stage, the earlier ones frozen, with
    # an orthogonality penalty | joint: every stage's data from round 1 (the upper reference)
    method: str = "naive"
    replay_size: int = 256  # replay: windows a client keeps from its earlier stages
    # l2 / ewc: λ of λ/2 · Σ F (w − w_prev)², F = 1 for l2, normalised to mean 1 for ewc; olora: λ of
    # λ · Σ ||A · A_kᵀ||₁ against the earlier stages' adapters
    reg_strength: float = 1.0
    fisher_windows: int = 512  # ewc: windows per client for its Fisher estimate
    # ewc: where the importance of a LoRA layer sits. parameters: a diagonal Fisher on A and B apart (like every
    # other trainable tensor) | product: the diagonal Fisher of the layer's update W = scaling·B·A itself
    # (d_out × d_in, exact, no factorised approximation), penalty λ/2 · Σ F ⊙ (s·B·A − s·B₀·A₀)²; frontend and
    # head stay per-parameter. product costs bytes: its importance is d_out × d_in per layer (docs/continual.md)
    ewc_importance: str = "parameters"

    def validate(self, path: str) -> None:
        if not self.stages:
            raise ConfigError(f"{path}.stages is empty: list at least one stage ({{rounds: N, ...}})")
        if self.method not in CONTINUAL_METHODS:
            raise ConfigError(f"{path}.method must be one of {list(CONTINUAL_METHODS)}, got `{self.method}`")
        names = [s.name or f"stage-{i + 1}" for i, s in enumerate(self.stages)]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}.stages: two stages share a name ({names})")
        if self.replay_size < 1 or self.fisher_windows < 1:
            raise ConfigError(f"{path}: replay_size and fisher_windows must be >= 1")
        if not self.reg_strength >= 0:
            raise ConfigError(f"{path}.reg_strength must be >= 0, got {self.reg_strength}")
        if self.ewc_importance not in EWC_IMPORTANCE:
            raise ConfigError(f"{path}.ewc_importance must be one of {list(EWC_IMPORTANCE)}, got "
                              f"`{self.ewc_importance}`")  # fmt: skip
        if self.ewc_importance == "product" and self.method != "ewc":
            raise ConfigError(f"{path}.ewc_importance=product places ewc's Fisher on the LoRA product B·A, so it "
                              f"needs {path}.method=ewc (got `{self.method}`); drop it or set method: ewc")  # fmt: skip

    @property
    def stage_names(self) -> list[str]:
        return [s.name or f"stage-{i + 1}" for i, s in enumerate(self.stages)]

    @property
    def total_rounds(self) -> int:
        return sum(s.rounds for s in self.stages)


@dataclass
class ExperimentConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    continual: ContinualConfig | None = None  # a stage schedule (continual adaptation); null: one stage

    def validate(self, path: str = "") -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"name must be a folder name without '/' or a leading '.', got `{self.name}`")
        window, tokens = self.data.window, self.model.tokens
        if self.model.kind in ("llm", "transformer") and window % tokens:  # both patch the window; caught early
            raise ConfigError(f"model.tokens={tokens} must divide data.window={window} "
                              f"(e.g. model.tokens={divisor_near(window, tokens)})")  # fmt: skip
        if self.continual is not None:
            self.federated.rounds = self.continual.total_rounds  # the schedule says how many rounds there are
            if self.federated.dp is not None:
                raise ConfigError("continual with federated.dp is not supported: Flower's DP accountant assumes one "
                                  "number of sampled clients, and stages change who takes part")  # fmt: skip
            if self.continual.method == "olora":
                check_olora(self.model)
            if self.continual.ewc_importance == "product" and (self.model.kind != "llm"
                                                                or self.model.finetune != "lora"):
                raise ConfigError("continual.ewc_importance=product weights the LoRA layers' products B·A, so it "
                                  f"needs model.kind=llm and model.finetune=lora (got kind={self.model.kind}, "
                                  f"finetune={self.model.finetune}); use ewc_importance: parameters")  # fmt: skip

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_olora(model: ModelConfig) -> None:
    """continual.method=olora adds a LoRA adapter per stage and trains its A: it needs LoRA with A trainable."""
    if model.kind != "llm" or model.finetune != "lora":
        raise ConfigError(f"continual.method=olora adds a LoRA adapter per stage, so it needs model.kind=llm and "
                          f"model.finetune=lora (got kind={model.kind}, finetune={model.finetune}); set them, or "
                          "use l2 / ewc")  # fmt: skip
    if model.lora.freeze_a:
        raise ConfigError("continual.method=olora keeps each stage's A orthogonal to the earlier ones, so A must "
                          "train: set model.lora.freeze_a=false and a strategy other than ffa-lora")  # fmt: skip


# ---- loading ----------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check (and gently convert) one value against a type annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        arms = [a for a in args if a is not type(None)]
        for a in arms:
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        if len(arms) > 1:  # say what was wrong within the arm of the value's shape, else every shape allowed
            shaped = [e for a, e in zip(arms, errors) if _shape_of(a) == _shape_of(type(value))]
            if shaped:
                raise ConfigError(shaped[0])
            raise ConfigError(f"{path} must be {' or '.join(_describe(a) for a in arms)}, got {value!r}")
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and item is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): (v if vt is Any else _coerce(v, vt, f"{path}.{k}")) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        if not math.isfinite(value):  # NaN would pass every range check below
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # subject ids written as numbers
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    return value


def _shape_of(tp: Any) -> str:
    """list, mapping or scalar: what kind of YAML value a type annotation (or a value's type) is."""
    origin = typing.get_origin(tp) or tp
    if origin in (list, tuple):
        return "list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    return "scalar"


def _describe(tp: Any) -> str:
    """A type annotation in words, for an error message."""
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return "a list of strings" if item is str else "a list"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(tp, "a mapping" if _shape_of(tp) == "mapping" else getattr(tp, "__name__", str(tp)))


def from_dict(cls: type, data: dict, path: str = "") -> Any:
    """Build a config dataclass from a mapping; unknown keys fail with a suggestion."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in fields:
            if key_path in MOVED_KEYS and value in (None, []):
                continue  # the moved key's empty default, which a resolved config.yaml written before the move holds
            if key_path in MOVED_KEYS:
                raise ConfigError(f"config key `{key_path}` moved: use {MOVED_KEYS[key_path]}")
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; known keys: {sorted(fields)}"
            raise ConfigError(f"unknown config key `{key_path}`{hint}")
        kwargs[key] = _coerce(value, hints[key], key_path)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path or "config")
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override `{item}` must look like key=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override `{item}`: value is not valid YAML ({e})") from e
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override `{item}`: `{p}` is not a section")
            node = node[p]
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config (or the defaults when ``path`` is None) and apply overrides.

    ``configs/NAME`` that is not in the working directory is one of the configs fedhar ships."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file() and not path.is_absolute() and path.parent == Path("configs"):
            path = shipped_config(path.name)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not a UTF-8 text file (byte {e.start}); a config is YAML text") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return from_dict(ExperimentConfig, data)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def divisor_near(n: int, k: int) -> int:
    """The divisor of ``n`` closest to ``k`` (a token count that cuts a window into equal patches)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - k))


def shipped_config(name: str) -> Path:
    """``configs/<name>`` as fedhar ships it: the installed package's copy (``fedhar/configs``, mapped from the
    top-level ``configs/`` in pyproject.toml), or a source checkout's ``configs/``."""
    package = Path(__file__).resolve().parent
    for folder in (package / "configs", package.parent / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"fedhar ships no config `{name}`; pass --config PATH (a YAML experiment config)")
