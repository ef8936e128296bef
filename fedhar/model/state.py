"""The trainable state: the only tensors fedhar trains, saves and sends (frontend + LoRA + head).

Exchanged as ``name → numpy array``; stored as safetensors next to a JSON model description,
never pickled. Loading checks names, shapes, dtypes and finiteness and says what differs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from fedhar import posthoc
from fedhar.config import ModelConfig, from_dict
from fedhar.errors import CheckpointError, ConfigError
from fedhar.model import stacked_adapters

FORMAT_VERSION = 1
STATE_FILE = "trainable.safetensors"
MODEL_FILE = "model.json"


def get_trainable_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Copies of the trainable tensors, in a stable order."""
    return {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}


def check_state(expected: dict[str, tuple[tuple[int, ...], np.dtype]], state: dict[str, np.ndarray],
                where: str = "state") -> None:  # fmt: skip
    """Raise CheckpointError naming every missing, unexpected, misshapen or non-finite tensor."""
    problems = []
    missing = [n for n in expected if n not in state]
    extra = [n for n in state if n not in expected]
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors (e.g. {extra[0]})")
    for n, (shape, dtype) in expected.items():
        if n not in state:
            continue
        a = state[n]
        if tuple(a.shape) != tuple(shape):
            problems.append(f"{n} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        elif a.dtype != dtype:
            problems.append(f"{n} has dtype {a.dtype}, expected {dtype}")
        elif not np.isfinite(a).all():
            problems.append(f"{n} contains NaN or Inf")
    if problems:
        raise CheckpointError(f"{where} does not fit this model: " + "; ".join(problems[:5]))


def expected_spec(model: nn.Module) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {
        n: (tuple(p.shape), np.dtype(str(p.dtype).removeprefix("torch.")))
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def set_trainable_state(model: nn.Module, state: dict[str, np.ndarray], where: str = "state") -> None:
    """Load trainable tensors after checking every name, shape, dtype and value."""
    check_state(expected_spec(model), state, where)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, a in state.items():
            params[n].copy_(torch.from_numpy(np.ascontiguousarray(a)))


def save_checkpoint(model: nn.Module, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``trainable.safetensors`` + ``model.json`` (written to temp names, then renamed)."""
    folder = Path(folder)
    state = get_trainable_state(model)
    bad = [n for n, a in state.items() if not np.isfinite(a).all()]
    if bad:  # refuse now rather than write a checkpoint that every later load rejects
        raise CheckpointError(f"trainable tensors {bad[:3]} hold NaN or Inf (the training diverged); "
                              "nothing was written — lower train.lr or set train.grad_clip > 0")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "format_version": FORMAT_VERSION,
        "model": _model_cfg_dict(model.model_cfg),
        "data": model.data.to_json(),
        "backbone_pretrained": model.backbone_pretrained,
        "init_seed": getattr(model, "init_seed", 0),  # rebuilds frozen seeded tensors (FFA-LoRA's A)
        "trainable_tensors": len(state),
        **(extra or {}),
    }
    if model.backbone_pretrained is False:
        info["warning"] = "trained on an UNTRAINED (randomly initialised) test backbone"
    if model.backbone_pretrained is False:  # a random backbone (a tiny test model, or model.pretrained=false)
        from fedhar.model.backbones import TINY, frozen_fingerprint

        if model.model_cfg.backbone not in TINY:
            info["warning"] = ("trained on a randomly initialised backbone (model.pretrained=false: the "
                               "no-pretraining control)")  # fmt: skip
        # its frozen weights are not stored (they are not trainable): load_checkpoint regenerates them from
        # init_seed and checks them against this fingerprint. They never change during a run, so the hash is
        # taken once per model, not at every round's checkpoint
        if getattr(model, "_frozen_fingerprint", None) is None:
            model._frozen_fingerprint = frozen_fingerprint(model.backbone)
        info["random_backbone_sha256"] = model._frozen_fingerprint
    tmp_state, tmp_info = folder / (STATE_FILE + ".tmp"), folder / (MODEL_FILE + ".tmp")
    save_file(state, str(tmp_state), metadata={"format": "fedhar-trainable", "version": str(FORMAT_VERSION)})
    tmp_info.write_text(json.dumps(info, indent=2))
    tmp_state.replace(folder / STATE_FILE)
    tmp_info.replace(folder / MODEL_FILE)
    return folder


def _model_cfg_dict(cfg: ModelConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def read_checkpoint(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The model description and trainable tensors of a checkpoint folder, both checked (:func:`check_info`;
    the head's size against the label list) before anything is built from them."""
    folder = _checkpoint_folder(folder)
    info = read_checkpoint_info(folder)
    state_path = folder / STATE_FILE
    try:
        state = load_file(str(state_path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{state_path} is not a readable safetensors file ({e}); the file is truncated or "
                              "damaged: copy the checkpoint again") from None  # fmt: skip
    head = state.get("head.bias")
    labels = info["data"]["label_names"]
    if head is not None and head.shape != (len(labels),):
        raise CheckpointError(f"{folder / MODEL_FILE}: data.label_names lists {len(labels)} classes but the head in "
                              f"{STATE_FILE} has {head.shape[0] if head.ndim == 1 else head.shape} outputs: the two "
                              "files come from different models; restore them as `fedhar train` wrote them")  # fmt: skip
    return info, state


def _checkpoint_folder(folder: str | Path) -> Path:
    """The folder of a checkpoint given as its folder or one of its two files."""
    folder = Path(folder)
    if folder.is_file() and folder.name in (STATE_FILE, MODEL_FILE):
        folder = folder.parent
    if not folder.exists():
        raise CheckpointError(f"checkpoint {folder} does not exist (a run's is runs/<name>/checkpoint)")
    if (folder / "checkpoint" / MODEL_FILE).is_file():
        raise CheckpointError(f"{folder} is a run folder; its checkpoint is {folder / 'checkpoint'}")
    if not (folder / MODEL_FILE).is_file() or not (folder / STATE_FILE).is_file():
        raise CheckpointError(
            f"{folder} is not a fedhar checkpoint: it needs {MODEL_FILE} and {STATE_FILE} "
            "(as written by `fedhar train` into runs/<name>/checkpoint)"
        )
    return folder


#: a model.json is a few kB; one far larger is not a checkpoint description
MAX_INFO_BYTES = 16 << 20


def read_checkpoint_info(folder: str | Path) -> dict:
    """A checkpoint's ``model.json`` (model, data, provenance, post-hoc adapter), without reading its tensors.

    Every field fedhar reads from it is checked (:func:`check_info`): a value that is of the wrong type,
    out of range or not finite fails here, naming the file and the field, before a model is built."""
    info_path = _checkpoint_folder(folder) / MODEL_FILE
    if info_path.stat().st_size > MAX_INFO_BYTES:
        raise CheckpointError(f"{info_path} is {info_path.stat().st_size} bytes, not a fedhar model description "
                              f"(a few kB); restore the checkpoint as `fedhar train` wrote it")  # fmt: skip
    try:
        info = json.loads(info_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{info_path} is not UTF-8 text ({e}); restore the checkpoint as `fedhar train` "
                              "wrote it") from None  # fmt: skip
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{info_path} is not valid JSON ({e}); restore the checkpoint as `fedhar train` "
                              "wrote it") from None  # fmt: skip
    except RecursionError:
        raise CheckpointError(f"{info_path} nests JSON too deeply to be a fedhar model description") from None
    check_info(info, info_path)
    return info


_FIX = "restore the checkpoint as `fedhar train` wrote it (or train it again)"
#: sanity bounds of what a checkpoint may describe (far above any real HAR model or data)
MAX_CHANNELS, MAX_WINDOW, MAX_RATE_HZ, MAX_CLASSES = 1024, 100_000, 100_000.0, 10_000
_MODEL_BOUNDS = {"tokens": 4096, "conv_channels": 8192, "conv_depth": 64, "kernel_size": 1023, "hidden": 16384,
                 "heads": 1024, "depth": 256, "num_layers": 4096}  # fmt: skip


class _Fields:
    """Checks of the values of one JSON document; each failure names the file, the field and the fix."""

    def __init__(self, path: Path | str):
        self.path = path

    def fail(self, field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: field `{field}` {problem}; {_FIX}")

    def mapping(self, value, field: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a JSON object, got {_kind(value)}")
        return value

    def require(self, d: dict, key: str, field: str):
        if key not in d:
            raise self.fail(f"{field}.{key}" if field else key, "is missing")
        return d[key]

    def text(self, value, field: str, empty_ok: bool = False) -> str:
        if not isinstance(value, str) or (not value and not empty_ok):
            raise self.fail(field, f"must be a {'' if empty_ok else 'non-empty '}string, got {_kind(value)}")
        return value

    def texts(self, value, field: str, unique: bool = True, min_len: int = 0, max_len: int | None = None) -> list:
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list of strings, got {_kind(value)}")
        for i, v in enumerate(value):
            self.text(v, f"{field}[{i}]")
        if unique and len(set(value)) != len(value):
            raise self.fail(field, f"lists a name twice ({sorted(v for v in set(value) if value.count(v) > 1)[:3]})")
        if len(value) < min_len or (max_len is not None and len(value) > max_len):
            bound = f"{min_len}..{max_len}" if max_len is not None else f"at least {min_len}"
            raise self.fail(field, f"has {len(value)} entries, expected {bound}")
        return value

    def integer(self, value, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, f"must be an integer in {low}..{high}, got {_kind(value)}")
        return value

    def number(self, value, field: str, low: float, high: float, low_open: bool = False) -> float:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or not (low < value if low_open else low <= value) or not value <= high:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise self.fail(field, f"must be a finite number in {interval}, got {_kind(value)}")
        return float(value)

    def numbers(self, value, field: str, length: int) -> list[float]:
        if not isinstance(value, list) or len(value) != length:
            got = f"{len(value)} values" if isinstance(value, list) else _kind(value)
            raise self.fail(field, f"must be a list of {length} numbers (one per channel), got {got}")
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.fail(f"{field}[{i}]", f"must be a finite number, got {_kind(v)}")
        return value

    def flag(self, value, field: str, none_ok: bool = False) -> None:
        if not isinstance(value, bool) and not (none_ok and value is None):
            raise self.fail(field, f"must be true or false{' or null' if none_ok else ''}, got {_kind(value)}")


def _kind(value) -> str:
    """A value as an error message shows it: its JSON type, and the value itself when it is short."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    shown = repr(value)
    return names.get(type(value), type(value).__name__) + (f" {shown}" if len(shown) <= 40 and value else "")


def check_info(info, path: Path | str) -> None:
    """Validate a parsed ``model.json``: its type, format version, model config, data spec (layout, window,
    rate, labels, normaliser, windowing), seed, provenance and stored post-hoc adapter."""
    f = _Fields(path)
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} must hold a JSON object (the model description), got {_kind(info)}; {_FIX}")
    version = f.require(info, "format_version", "")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version!r}, expected {FORMAT_VERSION}; it was not written "
                              "by this fedhar (or was edited): use the fedhar version that wrote it, or retrain")  # fmt: skip
    model = f.mapping(f.require(info, "model", ""), "model")
    try:
        cfg = from_dict(ModelConfig, model, "model")
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}; {_FIX}") from None
    _check_model_cfg(f, cfg)
    data = f.mapping(f.require(info, "data", ""), "data")
    channels = _check_layout(f, f.mapping(f.require(data, "layout", "data"), "data.layout"))
    f.integer(f.require(data, "window_len", "data"), "data.window_len", 2, MAX_WINDOW)
    f.number(f.require(data, "sample_rate", "data"), "data.sample_rate", 0, MAX_RATE_HZ, low_open=True)
    labels = f.texts(f.require(data, "label_names", "data"), "data.label_names", min_len=1, max_len=MAX_CLASSES)
    norm = f.mapping(f.require(data, "normalizer", "data"), "data.normalizer")
    f.numbers(f.require(norm, "mean", "data.normalizer"), "data.normalizer.mean", channels)
    std = f.numbers(f.require(norm, "std", "data.normalizer"), "data.normalizer.std", channels)
    for i, v in enumerate(std):
        if not v > 0:
            raise f.fail(f"data.normalizer.std[{i}]", f"is {v!r}: a standard deviation must be > 0 (it divides every "
                         "sample)")  # fmt: skip
    if "windowing" in data:
        _check_windowing(f, f.mapping(data["windowing"], "data.windowing"))
    if "backbone_pretrained" in info:
        f.flag(info["backbone_pretrained"], "backbone_pretrained", none_ok=True)
    if "init_seed" in info:
        f.integer(info["init_seed"], "init_seed", 0, 2**63 - 1)
    if "trainable_tensors" in info:
        f.integer(info["trainable_tensors"], "trainable_tensors", 0, 10**9)
    for key in ("synthetic_data",):
        if key in info:
            f.flag(info[key], key)
    for key in ("warning", "run"):
        if key in info and info[key] is not None:
            f.text(info[key], key, empty_ok=True)
    if "random_backbone_sha256" in info:
        digest = f.text(info["random_backbone_sha256"], "random_backbone_sha256")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise f.fail("random_backbone_sha256", "must be 64 lowercase hex digits (a sha256)")
    if "train_subjects" in info:
        f.texts(info["train_subjects"], "train_subjects", unique=False)
    posthoc.check_stored(f, info, labels, channels)  # the post-hoc adapter it stores, if any


def _check_model_cfg(f: _Fields, cfg: ModelConfig) -> None:
    """Bounds and finiteness the config's own validation leaves open (a checkpoint is not a user's config)."""
    f.text(cfg.backbone, "model.backbone")
    for name, high in _MODEL_BOUNDS.items():
        value = getattr(cfg, name)
        if value is not None:
            f.integer(value, f"model.{name}", 1, high)
    f.number(cfg.dropout, "model.dropout", 0, 1)
    if not cfg.dropout < 1:
        raise f.fail("model.dropout", f"must be below 1, got {cfg.dropout}")
    f.integer(cfg.lora.r, "model.lora.r", 1, 4096)
    f.number(cfg.lora.alpha, "model.lora.alpha", 0, 1e6, low_open=True)


def _check_layout(f: _Fields, layout: dict) -> int:
    """The sensor layout's channels, groups (a partition of the channel indices) and units; the channel count."""
    channels = f.texts(f.require(layout, "channels", "data.layout"), "data.layout.channels", min_len=1,
                       max_len=MAX_CHANNELS)  # fmt: skip
    groups = f.mapping(f.require(layout, "groups", "data.layout"), "data.layout.groups")
    units = f.mapping(f.require(layout, "units", "data.layout"), "data.layout.units")
    seen: list[int] = []
    for name, idx in groups.items():
        field = f"data.layout.groups.{name}"
        if not name or not isinstance(idx, list) or not idx:
            raise f.fail(field, f"must be a non-empty list of channel indices, got {_kind(idx)}")
        seen += [f.integer(i, f"{field}[{k}]", 0, len(channels) - 1) for k, i in enumerate(idx)]
    if sorted(seen) != list(range(len(channels))):
        raise f.fail("data.layout.groups", f"must put each of the {len(channels)} channels in exactly one group")
    if set(units) != set(groups):
        raise f.fail("data.layout.units", f"must name a unit for each group {sorted(groups)}, got {sorted(units)}")
    for name, unit in units.items():
        f.text(unit, f"data.layout.units.{name}")
    return len(channels)


#: the loader options a checkpoint's windowing may carry, and the type each must have
_OPTION_TYPES = {"placement": "text", "device": "text", "units": "units", "sample_rate": "rate", "labels": "texts",
                 "max_gap_s": "rate", "sensors": "texts", "optional": "flag", "max_nan_gap": "count"}  # fmt: skip


def _check_windowing(f: _Fields, cut: dict) -> None:
    """How the training data were cut (it decides how `fedhar evaluate` reads a dataset folder)."""
    if "dataset" in cut:
        f.text(cut["dataset"], "data.windowing.dataset")
    if "overlap" in cut:
        f.number(cut["overlap"], "data.windowing.overlap", 0, 1)
        if not cut["overlap"] < 1:
            raise f.fail("data.windowing.overlap", f"must be below 1, got {cut['overlap']}")
    if "label_rule" in cut and cut["label_rule"] not in ("inside", "majority"):
        raise f.fail("data.windowing.label_rule", f"must be inside or majority, got {_kind(cut['label_rule'])}")
    if isinstance(cut.get("placement"), list):  # data.placement listing several (each read, then joined)
        f.texts(cut["placement"], "data.windowing.placement", min_len=1)
    elif cut.get("placement") is not None:
        f.text(cut["placement"], "data.windowing.placement")
    if "common_labels" in cut:
        f.flag(cut["common_labels"], "data.windowing.common_labels", none_ok=True)
    if cut.get("label_map") is not None:
        for k, v in f.mapping(cut["label_map"], "data.windowing.label_map").items():
            f.text(v, f"data.windowing.label_map.{k}", empty_ok=True)
    options = f.mapping(cut.get("loader_options", {}), "data.windowing.loader_options")
    for key, value in options.items():
        field = f"data.windowing.loader_options.{key}"
        kind = _OPTION_TYPES.get(key)
        if kind is None:
            raise f.fail(field, f"is not an option of any fedhar loader (known: {sorted(_OPTION_TYPES)})")
        if kind == "text":
            f.text(value, field)
        elif kind == "texts":
            f.texts(value, field)
        elif kind == "rate":
            f.number(value, field, 0, MAX_RATE_HZ, low_open=True)
        elif kind == "count":
            f.integer(value, field, 0, 10**9)
        elif kind == "flag":
            f.flag(value, field)
        elif isinstance(value, dict):
            for g, u in value.items():
                f.text(u, f"{field}.{g}")
        else:
            f.text(value, field)


def load_checkpoint(folder: str | Path, device: str = "cpu", allow_download: bool = False) -> nn.Module:
    """Rebuild the model a checkpoint describes (loading its backbone) and load its trainable state.

    The backbone comes from local files only (the Hugging Face cache, a local folder, fedhar's backbone and
    wheel caches) unless ``allow_download``: a checkpoint from elsewhere never makes fedhar reach the network
    by itself. Before anything is allocated, the model is built on the ``meta`` device (shapes, no memory) and
    its tensors compared with the file's, so a description that claims a huge model fails cheaply."""
    from fedhar.model.har_model import DataSpec, build_model

    folder = _checkpoint_folder(folder)
    info, state = read_checkpoint(folder)
    where = str(folder / MODEL_FILE)
    model_cfg = from_dict(ModelConfig, info["model"], "checkpoint.model")
    spec, seed = DataSpec.from_json(info["data"]), int(info.get("init_seed", 0))
    try:
        with torch.device("meta"):
            probe = build_model(model_cfg, spec, seed=seed, allow_download=allow_download, meta=True)
        check_state(expected_spec(probe), state, where=f"{folder / STATE_FILE} (described by {where})")
        del probe
        model = build_model(model_cfg, spec, seed=seed, allow_download=allow_download)
    except ConfigError as e:  # e.g. model.tokens that do not divide the window: the description is inconsistent
        raise CheckpointError(f"{where}: {e}; {_FIX}") from None
    set_trainable_state(model, state, where=str(folder))
    _check_random_backbone(model, info, where)
    _attach_past_adapters(model, folder)
    _check_reads_a_window(model, where)
    return model.to(device)


def _check_random_backbone(model: nn.Module, info: dict, where: str) -> None:
    """A checkpoint of a randomly initialised backbone (model.pretrained=false) stores its fingerprint, not its
    weights: the backbone regenerated from ``init_seed`` must match it, or the scores would be another model's."""
    expected = info.get("random_backbone_sha256")
    if expected is None:
        return
    from fedhar.model.backbones import frozen_fingerprint

    got = frozen_fingerprint(model.backbone)
    if got != expected:
        raise CheckpointError(f"{where}: the random backbone regenerated from init_seed {info.get('init_seed', 0)} "
                              f"(model.pretrained=false) is not the one it was trained with (sha256 {got[:12]}… vs "
                              f"{expected[:12]}…): torch or transformers draw other initial weights here; evaluate "
                              "it with the versions that trained it (run.json lists them)")  # fmt: skip


def _attach_past_adapters(model: nn.Module, folder: Path) -> None:
    """A checkpoint with frozen adapters beside the trained one (a continual ``olora`` run's earlier stages):
    attached and active, after their names, shapes and dtypes are checked against the model."""
    path = folder / stacked_adapters.PAST_FILE
    if not path.is_file():
        return
    try:
        past = load_file(str(path))
    except Exception as e:  # safetensors' own errors for a damaged file
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); copy the checkpoint again") from None
    try:
        if stacked_adapters.peft_of(model) is not None:
            spec = stacked_adapters.past_spec(expected_spec(model), stacked_adapters.stages_in(past))
            check_state(spec, past, where="the past adapters")
        stacked_adapters.attach(model, past)
    except (ConfigError, CheckpointError) as e:
        raise CheckpointError(f"{path}: {e}; {_FIX}") from None


def _check_reads_a_window(model: nn.Module, where: str) -> None:
    """One forward pass on a window of zeros: a description whose window the model cannot read (a DeepConvLSTM
    window shorter than its convolutions) or whose weights overflow to NaN fails here, not on the user's data."""
    data = model.data
    x = torch.zeros(1, data.layout.num_channels, data.window_len)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(x)
    except RuntimeError as e:  # torch's shape errors
        raise CheckpointError(f"{where}: the model it describes cannot read one window of {data.window_len} samples "
                              f"({str(e).splitlines()[0]}); {_FIX}") from None  # fmt: skip
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, len(data.label_names)) or not torch.isfinite(out).all():
        raise CheckpointError(f"{where}: the model gives {'NaN/Inf' if out.shape[-1:] == (len(data.label_names),) else tuple(out.shape)} "
                              f"scores for a window of zeros: its weights are out of range; {_FIX}")  # fmt: skip


#: the model settings that decide which trainable tensors a model has and what they mean: a checkpoint whose
#: values differ cannot start a run (train.init_from)
SHAPE_KEYS = ("kind", "backbone", "num_layers", "pretrained", "finetune", "tokens", "conv_channels", "conv_depth",
              "kernel_size", "stats_token", "head_cues", "hidden", "heads", "depth")  # fmt: skip
HEAD_PREFIX = "head."


def check_init_source(folder: str | Path, model_cfg: ModelConfig | None = None) -> Path:
    """The checkpoint folder ``train.init_from`` names, checked to be one (and, given ``model_cfg``, one of the
    same model: :func:`check_same_model`) before anything starts."""
    try:
        folder = _checkpoint_folder(folder)
        info = read_checkpoint_info(folder)
    except CheckpointError as e:
        raise CheckpointError(f"train.init_from: {e}") from None
    if model_cfg is not None:
        check_same_model(from_dict(ModelConfig, info["model"], "checkpoint.model"), model_cfg, folder)
    return folder.resolve()


def check_same_model(theirs: ModelConfig, ours: ModelConfig, folder: Path) -> None:
    """A CheckpointError naming both models when a checkpoint's settings (:data:`SHAPE_KEYS`, LoRA rank and
    targets) are not this config's: its tensors would not fit, or would mean something else."""
    differ = [k for k in SHAPE_KEYS if getattr(theirs, k) != getattr(ours, k)]
    differ += [f"lora.{k}" for k in ("r", "targets") if getattr(theirs.lora, k) != getattr(ours.lora, k)]
    if differ:
        shown = "; ".join(f"model.{k}: checkpoint {_value(theirs, k)!r}, this config {_value(ours, k)!r}"
                          for k in differ[:4])  # fmt: skip
        raise CheckpointError(f"train.init_from {folder}: its model ({_describe(theirs)}) is not this config's "
                              f"({_describe(ours)}): {shown}; start from a checkpoint of the same model, or set "
                              "those model.* keys to the checkpoint's")  # fmt: skip


def init_from_checkpoint(model: nn.Module, folder: str | Path) -> dict:
    """Start ``model`` from a trained checkpoint's trainable tensors (transfer, ``train.init_from``).

    Every trainable tensor but the head is carried over (the frontend, the LoRA adapters, the pooled norm, and
    the backbone itself under full fine-tuning); the head too when the checkpoint knows the same label set (its
    rows reordered to this model's label order), else this model keeps its new, seeded head. The checkpoint's
    model settings (:data:`SHAPE_KEYS`, LoRA rank and targets) must be this model's: a CheckpointError names
    both. The normaliser is not carried: it is this run's own, fitted on its own training windows. Returns the
    record of what was carried (written into the run's metrics.json and run.json)."""
    folder = check_init_source(folder)
    info, state = read_checkpoint(folder)
    check_same_model(from_dict(ModelConfig, info["model"], "checkpoint.model"), model.model_cfg, folder)
    their_labels, our_labels = list(info["data"]["label_names"]), list(model.data.label_names)
    same_labels = sorted(their_labels) == sorted(our_labels)
    expected = expected_spec(model)
    if same_labels and their_labels != our_labels:  # the same classes in another order: the head's rows follow
        order = [their_labels.index(c) for c in our_labels]
        state = {n: (a[order] if n.startswith(HEAD_PREFIX) else a) for n, a in state.items()}
    carried = {n: a for n, a in state.items() if same_labels or not n.startswith(HEAD_PREFIX)}
    spec = {n: v for n, v in expected.items() if same_labels or not n.startswith(HEAD_PREFIX)}
    try:
        check_state(spec, carried, where=f"train.init_from {folder / STATE_FILE}")
    except CheckpointError as e:
        their_channels = info["data"]["layout"]["channels"]
        raise CheckpointError(f"{e} (checkpoint data: {len(their_channels)} channels {their_channels}, window "
                              f"{info['data']['window_len']}; this run: {model.data.layout.num_channels} channels "
                              f"{list(model.data.layout.channels)}, window {model.data.window_len})") from None
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, a in carried.items():
            params[n].copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return {"checkpoint": str(folder), "run": info.get("run"), "model": _describe(model.model_cfg),
            "carried_tensors": len(carried), "new_head": not same_labels,
            "head": "carried" if same_labels else "new (label set differs)", "source_labels": their_labels,
            "source_synthetic_data": bool(info.get("synthetic_data", False))}  # fmt: skip


def _value(cfg: ModelConfig, key: str):
    return getattr(cfg.lora, key.split(".", 1)[1]) if key.startswith("lora.") else getattr(cfg, key)


def _describe(cfg: ModelConfig) -> str:
    if cfg.kind != "llm":
        return cfg.kind
    random = "" if cfg.pretrained else ", random init"
    return f"llm {cfg.backbone}, {cfg.num_layers or 'all'} blocks, {cfg.finetune}{random}"


def fetch_checkpoint_backbone(folder: str | Path) -> None:
    """Download the backbone a checkpoint names when it is not on this machine (``--allow-download``), so that
    :func:`load_checkpoint`, which reads local files only, finds it."""
    from fedhar.model.backbones import fetch_backbone

    info = read_checkpoint_info(folder)
    cfg = from_dict(ModelConfig, info["model"], "checkpoint.model")
    if cfg.kind == "llm":
        fetch_backbone(cfg.backbone, cfg.num_layers)
