"""The calibration-rules recipe on real HAPT recordings with a tiny checkpoint: every rule scored, raw windows
scored exactly where the segment windows are."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
from conftest import BASIC6, HAPT, requires_hapt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))


@requires_hapt
def test_recipe_scores_every_rule_and_guard_on_segments_recordings_and_one_posture_clients(tmp_path, monkeypatch):
    import calibration_rules

    from fedhar.config import ExperimentConfig, ModelConfig, save_config
    from fedhar.data.preprocess import Normalizer
    from fedhar.data.recording import IMU6
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import save_checkpoint

    run = tmp_path / "tiny-s0"
    spec = DataSpec(IMU6, 128, 50.0, list(BASIC6), Normalizer.identity(6))
    save_checkpoint(build_model(ModelConfig(kind="deepconvlstm", hidden=16), spec), run / "checkpoint")
    cfg = ExperimentConfig()
    cfg.data.path, cfg.data.dataset = str(HAPT), "hapt"
    cfg.data.split.train, cfg.data.split.val, cfg.data.split.test = ["1", "3", "5"], ["25"], ["27"]
    save_config(cfg, run / "config.yaml")
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["calibration_rules.py", str(run), "--out", str(out), "--gaps", "0.7"])
    calibration_rules.main()

    rows = list(csv.DictReader((out / "calibration_rules.csv").open()))
    combos = {(r["rule"], r["guard"]) for r in rows}
    assert ("as-trained", "-") in combos and ("otsu", "gap") in combos and ("gmm", "share") in combos
    as_trained = next(r for r in rows if r["rule"] == "as-trained")
    # the raw recordings' scored windows are exactly the segment windows: same figures before any re-split
    assert as_trained["val_recordings"] == as_trained["val_segments"]
    assert as_trained["test_recordings"] == as_trained["test_segments"]
    ours = next(r for r in rows if (r["rule"], r["guard"]) == ("otsu", "gap"))
    assert ours["test_one_posture_split"].endswith("/2")  # subject 27 without sitting, and without standing
    record = json.loads((out / "calibration_rules.json").read_text())
    assert record["git"] and record["versions"] and record["summary"][0]["runs"] == 1
    (cached,) = (out / "cache").glob(f"{tmp_path.name}-tiny-s0-*.npz")
    cache = dict(np.load(cached))
    clients = set(cache["raw_client"].tolist())  # every held-out recording is its own client
    assert len(clients) == 4 and {c.split("/")[0] for c in clients} == {"25", "27"} and "27/exp54" in clients
    assert (out / "calibration_rules.png").is_file()
    # another pair is its own cache entry, never the first pair's direction
    other = calibration_rules.collect(run, ("WALKING", "WALKING_UPSTAIRS"), out / "cache", [])
    assert len(list((out / "cache").glob("*.npz"))) == 2
    assert not np.allclose(other["direction"], cache["direction"])
