"""The claims benchmark (simulations/claims.py): every protocol runs at --quick size centralized, the labels protocol
federated too, and every run trained on exactly the labelled windows its protocol prescribes (counted from the
run's own data)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedhar.benchmarks import claims
from tests.conftest import requires_hapt


def _expected_labelled(run: Path, level: str) -> int:
    """The labelled windows the run's protocol gives its training subjects: per class and subject (client),
    k windows or p % (at least one of a class a subject has), computed here from the run's own data."""
    from fedhar.config import load_config
    from fedhar.data.pipeline import split_windows

    cfg = load_config(run / "config.yaml")
    train, _, _ = split_windows(cfg.data, cfg.seed)
    per_class, percent = cfg.data.labelled_per_class, cfg.data.labelled_percent
    if level.startswith("k="):
        assert per_class == int(level.split()[0][2:]) and percent is None
    elif level.endswith("%") and level != "100%":
        assert percent == float(level[:-1]) and per_class is None
    else:
        assert per_class is None and percent is None
    total = 0
    for subject in set(train.subject.tolist()):
        counts = np.bincount(train.y[train.subject == subject], minlength=train.num_classes)
        for n in counts:
            if per_class is not None:
                total += min(per_class, n)
            elif percent is not None:
                total += max(1, int(round(n * percent / 100))) if n else 0
            else:
                total += n
    return int(total)


def test_steps_to_reach_is_the_first_epoch_at_the_fraction_of_the_final_validation_score():
    points = [{"step": i + 1, "val_macro_f1": v} for i, v in enumerate([0.2, 0.5, 0.83, 0.95, 0.9])]
    assert claims.steps_to_reach(points, 0.90) == 3  # 0.83 >= 0.9 * 0.9
    assert claims.steps_to_reach(points, 0.95) == 4  # 0.83 < 0.855 <= 0.95
    assert claims.steps_to_reach([], 0.9) is None


@pytest.mark.parametrize("quick", [False, True])
def test_every_shipped_yaml_key_is_a_flag(quick, capsys):
    """The shipped settings parse (an unknown key would stop with its name); the unknown flag after them is then
    argparse's own error, which shows the YAML was read and accepted first."""
    with pytest.raises(SystemExit) as stop:
        claims.main([*(["--quick"] if quick else []), "--no-such-flag"])
    assert stop.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_the_plan_runs_each_setting_once_and_transfers_from_the_right_source():
    import argparse

    args = argparse.Namespace(protocol_list=list(claims.PROTOCOLS), fed_protocol_list=list(claims.PROTOCOLS),
                              transfer_list=list(claims.TRANSFERS), model_list=["deepconvlstm"],
                              fed_model_list=["deepconvlstm"], mode_list=["central", "fed"], seed_list=[0, 1],
                              percent_list=[10.0, 100.0], shot_list=[5], transfer_shot_list=[5], overrides=[],
                              tiny=False, epochs=3, rounds=2, spar="/spar", spar_train="[a]", spar_val="[b]",
                              spar_test="[c]", synthetic_subjects=4, synthetic_seconds=6.0,
                              device_overrides=["data.path=/dev.npz"])  # fmt: skip
    planned = claims.plan(args, {"deepconvlstm": {"lr": "1e-3"}})
    names = [p["name"] for p in planned]
    by_name = {p["name"]: p for p in planned}
    central = [p for p in planned if p["mode"] == "central" and p["seed"] == 0]
    assert {(p["protocol"], p["level"]) for p in central} == {
        ("labels", "100%"), ("labels", "10%"), ("shots", "k=5"), ("transfer-source", "synthetic"),
        ("transfer-spar", "k=5 scratch"), ("transfer-spar", "k=5 from hapt"), ("transfer-device", "k=5 scratch"),
        ("transfer-device", "k=5 from hapt"), ("transfer-synthetic", "k=5 scratch"),
        ("transfer-synthetic", "k=5 from synthetic")}  # fmt: skip
    assert len(planned) == 2 * 2 * len(central)
    for p in planned:
        if p["source"] is not None:  # the source: the same model, mode and seed, all labels
            source = by_name[p["source"]]
            assert (source["mode"], source["model"], source["seed"]) == (p["mode"], p["model"], p["seed"])
            assert source["level"] == ("synthetic" if p["protocol"] == "transfer-synthetic" else "100%")
        budget = [o for o in p["overrides"] if o.startswith("data.labelled")]
        if p["mode"] == "central" and p["level"] not in ("100%", "synthetic"):
            assert "data.labelled_per_subject=true" in budget  # the federation's very windows
        assert ("train.epochs=3" in p["overrides"]) == (p["mode"] == "central")
        assert ("federated.rounds=2" in p["overrides"]) == (p["mode"] == "fed")
    # the synthetic transfer's scratch run is the shots run itself (the same settings: run once)
    scratch = [p for p in central if p["level"] == "k=5 scratch" and p["protocol"] == "transfer-synthetic"][0]
    shots = [p for p in central if p["protocol"] == "shots"][0]
    assert scratch["overrides"] == shots["overrides"] and scratch["name"] == shots["name"]
    assert len(set(names)) < len(names)
    args.fed_protocol_list = ["labels"]  # --fed-protocols: the federated runs do only those
    fed = [p for p in claims.plan(args, {"deepconvlstm": {"lr": "1e-3"}}) if p["mode"] == "fed"]
    assert {(p["protocol"], p["level"]) for p in fed} == {("labels", "100%"), ("labels", "10%")}


def test_unknown_names_stop_with_the_choices(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown protocol `accuracy`; choose from \['labels'"):
        claims.main(["--out", str(tmp_path), "--protocols", "accuracy"])
    with pytest.raises(SystemExit, match="unknown model `gpt4`"):
        claims.main(["--out", str(tmp_path), "--models", "gpt4"])


@pytest.mark.slow
@requires_hapt
def test_quick_runs_every_protocol_from_the_right_number_of_labelled_windows(tmp_path):
    out = tmp_path / "claims"
    # one model centralized (the quick config has two): each run is a fresh process of ~7 s, so the second model's
    # ten runs would double the test; the plan of several models is checked above without running them
    claims.main(["--quick", "--out", str(out), "--models", "smollm2-lora"])
    for name in ("claims_runs.json", "claims_runs.csv", "claims_table.csv", "claims_table.md", "claims_labels.png",
                 "claims_shots.png", "claims_rounds.png"):  # fmt: skip
        assert (out / name).is_file(), name
    record = json.loads((out / "claims_runs.json").read_text())
    assert record["quick"] is True and record["git"] and record["versions"]  # the provenance
    models = ["smollm2-lora"]
    combos = [("central", m) for m in models] + [("fed", "smollm2-lora")]  # quick: one model federated
    # hyper-parameters: chosen per model on validation over the grid, recorded with where they came from
    for model in models:
        hp = record["hyperparameters"][model]
        grid = hp["grid_val_macro_f1"]
        assert set(grid) == {"1e-3", "3e-3"} and hp["lr"] == max(grid, key=grid.get)
        assert "validation" in hp["source"]
    runs = record["runs"]
    want = {("labels", "100%"), ("labels", "10%"), ("shots", "k=2"), ("transfer-source", "synthetic")}
    want |= {(f"transfer-{t}", f"k=2 {how}") for t in ("spar", "device", "synthetic")
             for how in ("scratch", "from synthetic" if t == "synthetic" else "from hapt")}  # fmt: skip
    want_fed = {("labels", "100%"), ("labels", "10%")}  # quick: the federated run does the labels protocol only
    assert record["fed_protocols"] == ["labels"]
    assert {(r["mode"], r["model"]) for r in runs} == set(combos)
    for mode, model in combos:
        mine = {(r["protocol"], r["level"]): r for r in runs if (r["mode"], r["model"]) == (mode, model)}
        expected = want_fed if mode == "fed" else want
        assert set(mine) == expected, (mode, model, sorted(set(mine) ^ expected))
        for (protocol, level), r in mine.items():
            assert math.isfinite(r["test_macro_f1"]) and 0 <= r["test_macro_f1"] <= 1, r
            assert math.isfinite(r["val_macro_f1"]), r
            assert r["lr"] == record["hyperparameters"][model]["lr"]
            # the count the run itself reports (metrics.json) is what the protocol prescribes for its data
            assert r["labelled_windows"] == _expected_labelled(Path(r["run"]), level), (mode, model, level)
            transferred = " from " in level
            metrics = json.loads((Path(r["run"]) / "metrics.json").read_text())
            assert ("init_from" in metrics) == transferred, r["run"]
            if transferred:
                assert metrics["init_from"]["new_head"] == (protocol == "transfer-spar")
    # the same labelled windows in both modes (centralized: per class and subject, federated: per client)
    central = {(r["protocol"], r["model"], r["level"]): r["labelled_windows"] for r in runs if r["mode"] == "central"}
    fed = {(r["protocol"], r["model"], r["level"]): r["labelled_windows"] for r in runs if r["mode"] == "fed"}
    assert fed and all(central[key] == n for key, n in fed.items())
    shots = [r for r in runs if r["protocol"] == "shots"]
    assert all(r["labelled_windows"] < [a for a in runs if a["protocol"] == "labels" and a["level"] == "100%"
                                        and a["model"] == r["model"]][0]["labelled_windows"] for r in shots)  # fmt: skip
    # convergence: epochs / rounds to 0.90 and 0.95 of the final validation macro-F1, within the run's budget
    conv = record["convergence"]
    assert {(c["mode"], c["model"]) for c in conv} == set(combos)
    for c in conv:
        assert c["steps_run"] == (1 if c["mode"] == "central" else 2)
        assert 1 <= c["to_0.90"] <= c["to_0.95"] <= c["steps_run"]
    # the table: its columns, one row per protocol, mode, model and level, and the convergence rows
    with (out / "claims_table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == claims.TABLE_COLUMNS
    assert len([t for t in table if t["protocol"] != "convergence"]) == len(want) * len(models) + len(want_fed)
    assert len([t for t in table if t["protocol"] == "convergence"]) == 2 * len(combos)
    assert all(t["seeds"] == "1" for t in table)
    for t in table:  # scores in the score columns, epochs / rounds in theirs
        if t["protocol"] == "convergence":
            assert t["test_macro_f1"] == "" and 1 <= float(t["epochs_or_rounds"]) <= 2
        else:
            assert 0 <= float(t["test_macro_f1"]) <= 1 and t["epochs_or_rounds"] == "" and int(t["labelled_windows"]) > 0
    md = (out / "claims_table.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(claims.TABLE_COLUMNS) + " |" and len(md) == len(table) + 2
