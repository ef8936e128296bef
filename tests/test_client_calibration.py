"""The per-client calibration recipe end to end on a tiny checkpoint: every run on its own split, files written."""

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))


def test_recipe_scores_each_run_on_its_own_split(tiny_windows, tmp_path, monkeypatch):
    import client_calibration

    from fedhar.config import ExperimentConfig, ModelConfig, save_config
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import save_checkpoint

    ws = dataclasses.replace(tiny_windows, label_names=["SITTING", "STANDING", "LAYING"])
    ws.save(tmp_path / "w.npz")
    run = tmp_path / "base-s0"
    save_checkpoint(build_model(ModelConfig(kind="deepconvlstm", hidden=16), DataSpec.from_windows(ws)), run / "checkpoint")
    cfg = ExperimentConfig()
    cfg.data.path = str(tmp_path / "w.npz")
    cfg.data.split.train, cfg.data.split.val, cfg.data.split.test = ["1", "2"], ["3"], ["4"]
    save_config(cfg, run / "config.yaml")
    monkeypatch.setattr("sys.argv", ["client_calibration.py", str(run), "--out", str(tmp_path / "out")])
    client_calibration.main()
    record = json.loads((tmp_path / "out" / "client_calibration.json").read_text())
    row = record["per_run"][0]
    assert row["val_subjects"] == "3" and row["test_subjects"] == "4"
    assert all(0 <= row[k] <= 1 for k in ("val_as_trained", "val_calibrated", "test_as_trained", "test_calibrated"))
    assert set(record["runs"]["base-s0"]["per_subject"]["test"]) <= {"4"}
    assert len(record["runs"]["base-s0"]["direction"]) == 3 + 6  # gravity direction + log sway of 6 channels
    assert (tmp_path / "out" / "client_calibration.png").is_file()
