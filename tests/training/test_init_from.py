"""``train.init_from``: a run starts from a trained checkpoint's tensors (transfer), centralized and federated —
frontend and LoRA carried over, a new head when the label set differs, the source recorded, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhar.cli.main import main
from fedhar.config import load_config
from fedhar.errors import CheckpointError
from fedhar.model.har_model import DataSpec, build_model
from fedhar.model.state import get_trainable_state, init_from_checkpoint, read_checkpoint
from tests.federated.test_federated import _server_task_identity, tiny_cfg  # noqa: F401 - an autouse fixture

TINY = ["data.dataset=synthetic", "data.synthetic={subjects: 4, seconds_per_activity: 6}", "data.window=32",
        "model.tokens=8", "model.backbone=tiny-llama", "model.num_layers=2", "model.conv_channels=16",
        "data.split.train=[1, 2]", "data.split.val=[3]", "data.split.test=[4]", "train.epochs=1",
        "train.max_steps_per_epoch=2", "train.device=cpu"]  # fmt: skip
FOUR = "data.classes=[WALKING, SITTING, STANDING, LAYING]"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained centralized run on all six synthetic activities (seed 0)."""
    out = tmp_path_factory.mktemp("source")
    assert main(["train", "--quiet", f"output_dir={out}", "name=src", *TINY]) == 0
    return out / "src" / "checkpoint"


def _model(*overrides: str, seed: int = 5):
    from fedhar.data.pipeline import split_windows

    cfg = load_config(None, [*TINY, *overrides])
    train, _, _ = split_windows(cfg.data, cfg.seed)
    return build_model(cfg.model, DataSpec.from_windows(train), seed)


def test_carried_tensors_are_the_checkpoints_and_the_head_is_new_when_labels_differ(source):
    _, saved = read_checkpoint(source)
    fresh = get_trainable_state(_model(FOUR))
    model = _model(FOUR)
    record = init_from_checkpoint(model, source)
    state = get_trainable_state(model)
    assert record["new_head"] is True and record["carried_tensors"] == len(saved) - 2
    heads = [n for n in state if n.startswith("head.")]
    assert heads == ["head.weight", "head.bias"] and state["head.bias"].shape == (4,)
    for name, value in state.items():
        if name in heads:  # this model's own seeded head, untouched
            assert np.array_equal(value, fresh[name]), name
        else:
            assert np.array_equal(value, saved[name]), name
            assert not np.array_equal(value, fresh[name]), name  # the carried one, not an init that equals it
    assert any(".lora_" in n for n in state) and any(n.startswith("frontend.") for n in state)


def test_the_same_label_set_carries_the_head_in_this_models_order(source):
    info, saved = read_checkpoint(source)
    reordered = list(reversed(info["data"]["label_names"]))
    model = _model(f"data.classes=[{', '.join(reordered)}]")
    record = init_from_checkpoint(model, source)
    state = get_trainable_state(model)
    assert record["new_head"] is False and record["carried_tensors"] == len(saved)
    assert np.array_equal(state["head.weight"], saved["head.weight"][::-1])
    assert np.array_equal(state["head.bias"], saved["head.bias"][::-1])


def test_train_from_a_checkpoint_records_its_source(source, tmp_path):
    assert main(["train", "--quiet", f"output_dir={tmp_path}", "name=t", *TINY, FOUR,
                 f"train.init_from={source}"]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    run = json.loads((tmp_path / "t" / "run.json").read_text())
    assert metrics["init_from"]["checkpoint"] == str(source.resolve()) == run["init_from"]["checkpoint"]
    assert metrics["init_from"]["new_head"] is True and metrics["init_from"]["run"] == "src"
    assert json.loads((tmp_path / "t" / "checkpoint" / "model.json").read_text())["init_from"] == str(source.resolve())


@pytest.mark.parametrize("override, message", [
    ("model.backbone=tiny-gpt2", "model.backbone: checkpoint 'tiny-llama', this config 'tiny-gpt2'"),
    ("model.lora.r=4", "model.lora.r: checkpoint 8, this config 4"),
    ("model.tokens=4", "model.tokens: checkpoint 8, this config 4"),
    ("data.sensors=[acc]", "does not fit this model"),
])  # fmt: skip
def test_a_checkpoint_of_another_model_fails_naming_both(source, tmp_path, capsys, override, message):
    assert main(["train", "--quiet", f"output_dir={tmp_path}", "name=x", *TINY, override,
                 f"train.init_from={source}"]) == 2  # fmt: skip
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and message in err[0] and "train.init_from" in err[0], err
    assert not (tmp_path / "x").exists()  # the model's settings are checked before the run folder exists


def test_a_missing_checkpoint_fails_before_a_run_folder_exists(tmp_path, capsys):
    for command in ("train", "simulate"):
        assert main([command, "--quiet", f"output_dir={tmp_path}", "name=m", *TINY,
                     f"train.init_from={tmp_path / 'nope'}"]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "train.init_from" in err[0] and "does not exist" in err[0], err
        assert not (tmp_path / "m").exists()
    with pytest.raises(CheckpointError, match="is not a fedhar checkpoint"):
        init_from_checkpoint(_model(), tmp_path)


def test_the_servers_initial_global_state_starts_from_the_checkpoint(source, tmp_path):
    from fedhar.federated.server import RoundLoop, ServerJob
    from fedhar.results.run import RunDir
    from tests.federated.test_federated import DirectGrid

    _, saved = read_checkpoint(source)
    fed = ["data.window=32", "model.conv_channels=16", "model.tokens=8", FOUR]
    cfg = tiny_cfg(f"output_dir={tmp_path}", "name=f", *fed, f"train.init_from={source}")
    loop = RoundLoop(None, ServerJob(cfg, RunDir.create(cfg, kind="simulate"), progress=False, simulated=True))
    assert loop.init_from["new_head"] is True
    for name, value in loop.global_state.items():
        assert np.array_equal(value, saved[name]) != name.startswith("head."), name
    from fedhar.federated.server import run_federation

    cfg = tiny_cfg(f"output_dir={tmp_path}", "name=g", *fed, f"train.init_from={source}", "federated.rounds=1")
    run = RunDir.create(cfg, kind="simulate")
    summary = run_federation(DirectGrid(3), ServerJob(cfg, run, expected_nodes=3, progress=False))
    assert summary["init_from"]["checkpoint"] == str(source.resolve())
    assert json.loads(run.file("run.json").read_text())["init_from"]["carried_tensors"] == len(saved) - 2
