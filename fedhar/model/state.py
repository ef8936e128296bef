"""The trainable state: the only tensors fedhar trains, saves and sends (frontend + LoRA + head).

Exchanged as ``name → numpy array``; stored as safetensors next to a JSON model description,
never pickled. Loading checks names, shapes, dtypes and finiteness and says what differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from fedhar.config import ModelConfig, from_dict
from fedhar.errors import CheckpointError

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
    """The model description and trainable tensors of a checkpoint folder."""
    folder = _checkpoint_folder(folder)
    info = read_checkpoint_info(folder)
    state_path = folder / STATE_FILE
    try:
        state = load_file(str(state_path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{state_path} is not a readable safetensors file ({e})") from e
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


def read_checkpoint_info(folder: str | Path) -> dict:
    """A checkpoint's ``model.json`` (model, data, provenance, calibration), without reading its tensors."""
    info_path = _checkpoint_folder(folder) / MODEL_FILE
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{info_path} is not valid JSON ({e})") from e
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{info_path} has format version {info.get('format_version')}, expected {FORMAT_VERSION}")
    return info


def load_checkpoint(folder: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild the model a checkpoint describes (loading its backbone) and load its trainable state."""
    from fedhar.model.har_model import DataSpec, build_model

    info, state = read_checkpoint(folder)
    model_cfg = from_dict(ModelConfig, info["model"], "checkpoint.model")
    model = build_model(model_cfg, DataSpec.from_json(info["data"]), seed=int(info.get("init_seed", 0)))
    set_trainable_state(model, state, where=str(folder))
    return model.to(device)
