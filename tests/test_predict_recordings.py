"""The whole-recording recipe on real HAPT recordings with a tiny untrained model: the predict path, scored."""

import json
import sys
from pathlib import Path

import numpy as np
from conftest import BASIC6, HAPT, requires_hapt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))


@requires_hapt
def test_recipe_scores_the_labelled_windows_of_whole_recordings(tmp_path, monkeypatch):
    import predict_recordings

    from fedhar.calibration import PairCalibration
    from fedhar.config import ExperimentConfig, ModelConfig, save_config
    from fedhar.data.preprocess import Normalizer
    from fedhar.data.recording import IMU6
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import save_checkpoint

    spec = DataSpec(IMU6, 128, 50.0, list(BASIC6), Normalizer.identity(6))
    run = tmp_path / "tiny"
    calibration = PairCalibration("SITTING", "STANDING", np.r_[1.0, np.zeros(8)], typical_gap=0.3)
    save_checkpoint(build_model(ModelConfig(kind="deepconvlstm", hidden=16), spec), run / "checkpoint",
                    extra={"client_calibration": calibration.to_json()})  # fmt: skip
    save_config(ExperimentConfig(), run / "config.yaml")
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["predict_recordings.py", str(run), "--data", str(HAPT), "--subjects", "27",
                                     "--out", str(out)])  # fmt: skip
    predict_recordings.main()
    record = json.loads((out / "predict_recordings.json").read_text())
    row = record["per_run"][0]
    assert row["recordings"] == 2 and row["calibration"] == "stored in the checkpoint"
    # subject 27's labelled 6-class windows are exactly its windows in the benchmark split (label rule `inside`)
    assert row["windows_scored"] == 368 and row["windows_predicted"] > row["windows_scored"]
    assert all(0 <= row[f"macro_f1_{v}"] <= 1 for v in ("as_trained", "per_recording", "per_wearer"))
    assert sorted(record["runs"]["tiny"]["recordings"]) == ["exp54_user27", "exp55_user27"]
    assert (out / "recordings" / "exp54_user27.csv").is_file() and (out / "predict_recordings.png").is_file()
