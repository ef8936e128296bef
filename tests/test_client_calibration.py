"""The per-client calibration recipe end to end on a tiny checkpoint: every run on its own split, files written."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))


def test_recipe_scores_each_run_on_its_own_split(posture_run, tmp_path, monkeypatch):
    import client_calibration

    monkeypatch.setattr("sys.argv", ["client_calibration.py", str(posture_run), "--out", str(tmp_path / "out")])
    client_calibration.main()
    record = json.loads((tmp_path / "out" / "client_calibration.json").read_text())
    row = record["per_run"][0]
    assert row["val_subjects"] == "3" and row["test_subjects"] == "4"
    assert all(0 <= row[k] <= 1 for k in ("val_as_trained", "val_calibrated", "test_as_trained", "test_calibrated"))
    assert set(record["runs"]["base-s0"]["per_subject"]["test"]) <= {"4"}
    assert len(record["runs"]["base-s0"]["direction"]) == 3 + 6  # gravity direction + log sway of 6 channels
    assert (tmp_path / "out" / "client_calibration.png").is_file()
