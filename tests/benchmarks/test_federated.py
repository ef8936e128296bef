"""`simulations/federated.py compare`: the centralized row taken from a finished run, reused only with the same
settings."""

import json
from pathlib import Path

import pytest

from fedhar.benchmarks.federated import finished_centralized
from fedhar.config import load_config, save_config

CONFIG = str(Path(__file__).parents[2] / "configs" / "hapt.yaml")


def _finished_train_run(run_dir: Path, overrides: list[str]) -> None:
    run_dir.mkdir(parents=True)
    save_config(load_config(CONFIG, overrides), run_dir / "config.yaml")
    metrics = {"test": {"accuracy": 0.95, "macro_f1": 0.96}, "epochs_run": 15, "best_epoch": 12, "wall_seconds": 784.6}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_a_finished_run_of_the_same_settings_is_the_centralized_row(tmp_path):
    _finished_train_run(tmp_path / "smollm2-lora", ["name=smollm2-lora", "model.finetune=lora"])
    row = finished_centralized(tmp_path / "smollm2-lora", CONFIG, [])
    assert row["variant"] == "centralized" and row["test_macro_f1"] == 0.96 and row["wall_seconds"] == 784.6


def test_a_run_with_other_settings_or_none_at_all_is_refused(tmp_path):
    _finished_train_run(tmp_path / "old", ["train.augment.mixup_alpha=0"])
    with pytest.raises(SystemExit, match=r"other settings \(train.augment.mixup_alpha\)"):
        finished_centralized(tmp_path / "old", CONFIG, [])
    assert finished_centralized(tmp_path / "old", CONFIG, ["train.augment.mixup_alpha=0"])["best_epoch"] == 12
    with pytest.raises(SystemExit, match="no metrics.json there"):
        finished_centralized(tmp_path / "missing", CONFIG, [])
