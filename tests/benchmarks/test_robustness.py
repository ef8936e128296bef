"""simulations/robustness.py --quick: every kind of row (attacked, skipped, DP), each the figure its run wrote."""

import csv
import json

import numpy as np
import pytest

from fedhar.benchmarks import robustness


@pytest.mark.slow
def test_quick_grid_writes_attacked_skipped_and_dp_rows(tmp_path):
    out = tmp_path / "rq"
    robustness.main(["--out", str(out), "--quick", "--attackers", "1", "--attacks", "scale",
                     "--strategies", "fedavg,bulyan", "--dp-noise", "1.0"])  # fmt: skip
    rows = {r["variant"]: r for r in json.loads((out / "robustness.json").read_text())["rows"]}
    assert set(rows) == {"fedavg-scale-1", "bulyan-scale-1", "fedavg-clean", "dp-1"}
    assert "needs at least 7 updates per round (4f+3)" in rows["bulyan-scale-1"]["skipped"]
    for name in ("fedavg-scale-1", "fedavg-clean", "dp-1"):  # the row is the run's own final figure
        final = json.loads((out / name / "metrics.json").read_text())["final"]
        assert np.isfinite(rows[name]["test_macro_f1"])
        assert rows[name]["test_macro_f1"] == round(final["test_macro_f1"], 4)
        assert rows[name]["val_macro_f1"] == round(final["val_macro_f1"], 4)
    attacked = json.loads((out / "fedavg-scale-1" / "metrics.json").read_text())
    assert attacked["attack"]["kind"] == "scale" and len(attacked["attack"]["attackers"]) == 1
    dp = json.loads((out / "dp-1" / "metrics.json").read_text())
    assert rows["dp-1"]["epsilon"] > 0 and rows["dp-1"]["epsilon"] == pytest.approx(dp["dp"]["spent"]["epsilon"], abs=1e-3)
    assert dp["dp"]["clipping_norm"] == pytest.approx(rows["dp-1"]["clipping_norm"], rel=1e-5)
    with open(out / "robustness.csv") as f:
        assert [r["variant"] for r in csv.DictReader(f)] == list(rows)
    assert (out / "robustness_dp.png").stat().st_size > 0
    # a second run reuses every finished variant instead of measuring it again
    robustness.main(["--out", str(out), "--quick", "--attackers", "1", "--attacks", "scale",
                     "--strategies", "fedavg,bulyan", "--dp-noise", "1.0"])  # fmt: skip
    again = {r["variant"]: r for r in json.loads((out / "robustness.json").read_text())["rows"]}
    assert again["dp-1"]["test_macro_f1"] == rows["dp-1"]["test_macro_f1"]
