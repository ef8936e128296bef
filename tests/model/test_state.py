import json
import re

import numpy as np
import pytest
import torch

from fedhar.config import ModelConfig
from fedhar.errors import CheckpointError
from fedhar.model.har_model import DataSpec, build_model
from fedhar.model.state import (
    get_trainable_state,
    load_checkpoint,
    save_checkpoint,
    set_trainable_state,
)


@pytest.fixture
def model(tiny_windows):
    return build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8), DataSpec.from_windows(tiny_windows))


def test_state_roundtrip(model):
    state = get_trainable_state(model)
    assert all(isinstance(a, np.ndarray) for a in state.values())
    changed = {k: v + 1.0 for k, v in state.items()}
    set_trainable_state(model, changed)
    again = get_trainable_state(model)
    assert all(np.array_equal(again[k], changed[k]) for k in state)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop(next(iter(s))), "missing"),
        (lambda s: s.update(extra=np.zeros(1, np.float32)), "unexpected"),
        (lambda s: s.update({k: v[..., :1] for k, v in list(s.items())[:1]}), "shape"),
        (lambda s: s.update({k: v.astype(np.float64) for k, v in list(s.items())[:1]}), "dtype"),
        (lambda s: s.update({k: np.full_like(v, np.nan) for k, v in list(s.items())[:1]}), "NaN"),
    ],
)
def test_mismatches_are_named(model, mutate, message):
    state = get_trainable_state(model)
    before = get_trainable_state(model)
    mutate(state)
    with pytest.raises(CheckpointError, match=message):
        set_trainable_state(model, state)
    after = get_trainable_state(model)  # a rejected state changes nothing
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_checkpoint_roundtrip_predicts_the_same(model, tiny_windows, tmp_path):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    model.eval()
    save_checkpoint(model, tmp_path / "ckpt")
    info = json.loads((tmp_path / "ckpt" / "model.json").read_text())
    assert "UNTRAINED" in info["warning"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    x = torch.from_numpy(tiny_windows.x[:8])
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded.eval()(x))


def test_checkpoint_with_head_cues_roundtrips(tiny_windows, tmp_path):
    cfg = ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8, head_cues=True)
    model = build_model(cfg, DataSpec.from_windows(tiny_windows)).eval()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt").eval()
    assert loaded.cues is not None
    x = torch.from_numpy(tiny_windows.x[:8])
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded(x))


def test_checkpoint_errors(model, tmp_path):
    with pytest.raises(CheckpointError, match="not a fedhar checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(model, tmp_path / "run" / "checkpoint")
    with pytest.raises(CheckpointError, match=r"is a run folder; its checkpoint is .*run/checkpoint"):
        load_checkpoint(tmp_path / "run")
    save_checkpoint(model, tmp_path / "c")
    (tmp_path / "c" / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "c")


def test_checkpoint_for_another_architecture_fails(model, tiny_windows, tmp_path):
    save_checkpoint(model, tmp_path / "c")
    info = json.loads((tmp_path / "c" / "model.json").read_text())
    info["model"]["lora"]["r"] = 4
    (tmp_path / "c" / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path / "c")


def test_diverged_weights_are_not_written(model, tmp_path):
    save_checkpoint(model, tmp_path / "c")
    before = (tmp_path / "c" / "trainable.safetensors").read_bytes()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or Inf.*nothing was written"):
        save_checkpoint(model, tmp_path / "c")
    assert (tmp_path / "c" / "trainable.safetensors").read_bytes() == before  # the earlier checkpoint survives


@pytest.mark.parametrize("which", ["one", "all"])
def test_float64_checkpoint_is_refused_naming_the_dtype(model, tmp_path, which):
    """A trainable.safetensors with the right names and shapes but float64 tensors (e.g. written from numpy
    defaults) is refused, not silently cast into the float32 model."""
    from safetensors.numpy import load_file, save_file

    save_checkpoint(model, tmp_path / "c")
    path = tmp_path / "c" / "trainable.safetensors"
    state = load_file(str(path))
    names = list(state)[:1] if which == "one" else list(state)
    save_file({k: v.astype(np.float64) if k in names else v for k, v in state.items()}, str(path))
    assert {k: v.shape for k, v in load_file(str(path)).items()} == {k: v.shape for k, v in state.items()}
    named = re.escape(names[0]) if which == "one" else r"\S+"  # one tensor: that one is named
    message = rf"does not fit this model: {named} has dtype float64, expected float32"
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(tmp_path / "c")
    assert str(tmp_path / "c") in str(err.value)
