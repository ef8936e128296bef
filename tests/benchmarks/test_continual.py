"""The continual benchmark (simulations/continual.py): settings chosen on validation scores, the table and the targets'
verdicts."""

import json

import pytest

from fedhar.benchmarks import continual as cb


def _run(method, seed, val, test, forgetting, setting="", nbytes=1000.0, scenario="synthetic"):
    return {"scenario": scenario, "method": method, "setting": setting, "seed": seed, "val_final_average": val,
            "test_final_average": test, "test_forgetting": forgetting, "test_max_forgetting": forgetting + 0.1,
            "test_bwt": -forgetting, "test_fwt": 0.0, "test_final_accuracy": test,
            "bytes_per_client_per_round": nbytes}  # fmt: skip


def test_summary_is_over_the_chosen_setting_only_with_sample_sd():
    runs = [_run("replay", 0, 0.5, 0.6, 0.01, "replay_size=32"), _run("replay", 0, 0.4, 0.9, 0.0, "replay_size=128"),
            _run("replay", 1, 0.5, 0.8, 0.03, "replay_size=32")]  # fmt: skip
    (t,) = cb.summarise(runs, {("synthetic", "replay"): "replay_size=32"})
    assert t["seeds"] == 2 and t["test_final_average_mean"] == pytest.approx(0.7)
    assert t["test_final_average_sd"] == pytest.approx(0.1414213, rel=1e-5)  # ddof=1
    assert t["test_final_average"] == "0.700 ± 0.141"


def test_targets_pick_the_best_method_on_validation_and_compare_with_joint():
    runs = [_run("naive", 0, 0.3, 0.3, 0.20), _run("joint", 0, 0.9, 0.80, 0.0),
            _run("replay", 0, 0.8, 0.79, 0.01, nbytes=1005.0),  # best on validation
            _run("l2", 0, 0.7, 0.95, 0.30, nbytes=3000.0)]  # best on test: must not be the one judged
    chosen = {("synthetic", m): "" for m in ("naive", "joint", "replay", "l2")}
    lines = "\n".join(cb.targets(cb.summarise(runs, chosen)))
    assert "naive forgets ≥ 0.05" in lines and "| 0.300 | yes |" in lines  # max forgetting = 0.2 + 0.1
    assert "best method (replay, by validation final average): forgetting ≤ 0.02 | 0.010 | yes" in lines
    assert "joint − replay = +0.010 | yes" in lines
    assert "1.005 × | yes" in lines


def test_targets_say_no_when_missed():
    runs = [_run("naive", 0, 0.3, 0.3, 0.0), _run("joint", 0, 0.9, 0.9, 0.0), _run("ewc", 0, 0.8, 0.5, 0.2, nbytes=3e3)]
    lines = cb.targets(cb.summarise(runs, {("synthetic", m): "" for m in ("naive", "joint", "ewc")}))
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in lines[2:]]
    assert verdicts == ["yes", "no", "no", "no"]  # naive's max forgetting 0.1 holds; ewc misses all three


def test_unknown_scenario_or_method_stops_with_the_choices(tmp_path):
    with pytest.raises(SystemExit, match="unknown scenario `realworld`"):
        cb.main(["--out", str(tmp_path), "--scenarios", "realworld"])
    with pytest.raises(SystemExit, match=r"unknown method `gem`; choose from \['naive'"):
        cb.main(["--out", str(tmp_path), "--methods", "gem"])


@pytest.mark.slow
def test_quick_run_chooses_on_validation_and_writes_every_file(tmp_path):
    out = tmp_path / "cq"
    cb.main(["--out", str(out), "--quick", "--methods", "naive,replay", "--replay-sizes", "16,64"])
    data = json.loads((out / "continual_runs.json").read_text())
    grid = [r for r in data["runs"] if r["method"] == "replay"]
    assert [r["setting"] for r in grid] == ["replay_size=16", "replay_size=64"]
    best = max(grid, key=lambda r: r["val_final_average"])["setting"]
    (row,) = [t for t in data["table"] if t["method"] == "replay"]
    assert row["setting"] == f"{best} (synthetic val)" and row["seeds"] == 1
    for name in ("continual_runs.csv", "continual_table.csv", "continual_table.md", "continual_targets.md",
                 "continual_benchmark.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    assert data["git"] and data["versions"]
    before = (out / "synthetic-naive-s0" / "metrics.json").stat().st_mtime_ns
    cb.main(["--out", str(out), "--quick", "--methods", "naive"])  # a re-run reuses what was measured
    assert (out / "synthetic-naive-s0" / "metrics.json").stat().st_mtime_ns == before


def test_tune_on_carries_the_setting_chosen_on_validation_to_the_other_scenarios(tmp_path, monkeypatch):
    calls = []
    val = {"16": 0.2, "64": 0.6, "256": 0.4}  # replay_size=64 scores best on synthetic's validation subject

    def fake_simulate(config, name, out, overrides):
        calls.append(name)
        return {}, 1.0, out / name

    def fake_row(scenario, method, setting, seed, c, wall, run_dir):
        v = val[setting.split("=")[1]] if setting else 0.5
        return {**_run(method, seed, v, v, 0.0, setting, scenario=scenario), "run_dir": str(run_dir)}

    monkeypatch.setattr(cb, "simulate", fake_simulate)
    monkeypatch.setattr(cb, "run_row", fake_row)
    cb.main(["--out", str(tmp_path), "--scenarios", "spar,synthetic", "--tune-on", "synthetic", "--methods", "replay",
             "--seeds", "0,1", "--replay-sizes", "16,64,256"])  # fmt: skip
    assert calls == ["synthetic-replay-replaysize16-s0", "synthetic-replay-replaysize64-s0",
                     "synthetic-replay-replaysize256-s0", "synthetic-replay-replaysize64-s1",
                     "spar-replay-replaysize64-s0", "spar-replay-replaysize64-s1"]  # fmt: skip
    table = json.loads((tmp_path / "continual_runs.json").read_text())["table"]
    assert [t["setting"] for t in table] == ["replay_size=64 (synthetic val)", "replay_size=64 (synthetic val)"]
    with pytest.raises(SystemExit, match="--tune-on hapt: none of these runs"):
        cb.main(["--out", str(tmp_path), "--scenarios", "spar", "--tune-on", "hapt"])


def test_table_only_trains_nothing_and_drops_a_method_whose_grid_is_incomplete(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cb, "simulate", lambda config, name, out, overrides: calls.append(name) or ({}, 1.0, out / name))
    monkeypatch.setattr(cb, "run_row", lambda scenario, method, setting, seed, c, wall, run_dir:
                        {**_run(method, seed, 0.5, 0.5, 0.0, setting, scenario=scenario), "run_dir": str(run_dir)})
    for name in ("synthetic-naive-s0", "synthetic-naive-s1", "synthetic-replay-replaysize16-s0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "continual.json").write_text("{}")
    cb.main(["--out", str(tmp_path), "--scenarios", "synthetic,spar", "--tune-on", "synthetic", "--methods",
             "naive,replay", "--seeds", "0,1", "--replay-sizes", "16,64", "--table-only"])  # fmt: skip
    assert calls == ["synthetic-naive-s0", "synthetic-naive-s1", "synthetic-replay-replaysize16-s0"]  # reused only
    out = capsys.readouterr().out
    assert "synthetic-replay-replaysize64-s0" in out and "synthetic replay: grid incomplete at seed 0" in out
    assert "spar replay: no setting chosen on synthetic" in out and "spar-naive-s0" in out
    table = json.loads((tmp_path / "continual_runs.json").read_text())["table"]
    assert [(t["method"], t["seeds"]) for t in table] == [("naive", 2)]
