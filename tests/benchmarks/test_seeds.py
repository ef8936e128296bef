"""The decision rule of the seed study (`simulations/models.py seeds`): paired with the base, better only beyond noise."""

from pathlib import Path

import pytest

from fedhar.benchmarks import seeds
from fedhar.benchmarks.seeds import fold_splits, summarize


def _rows(candidate, val, test):
    return [{"candidate": candidate, "seed": s, "best_val_macro_f1": v, "test_macro_f1": t}
            for s, (v, t) in enumerate(zip(val, test))]  # fmt: skip


def _verdict(val, base_val=(0.95, 0.96, 0.94, 0.97)):
    rows = _rows("base", base_val, [0.94] * 4) + _rows("meanpool", val, [0.95] * 4)
    return next(s for s in summarize(rows, ["base", "meanpool"]) if s["candidate"] == "meanpool")


def test_consistent_gain_on_every_seed_is_better():
    s = _verdict([0.96, 0.97, 0.95, 0.98])
    assert s["verdict"] == "better" and s["val_vs_base"] == pytest.approx(0.01)
    assert s["paired_seeds"] == "0 1 2 3" and s["test_vs_base"] == pytest.approx(0.01)


def test_a_positive_mean_from_one_lucky_seed_is_noise():
    assert _verdict([0.95, 0.96, 0.94, 1.0])["verdict"] == "within seed noise"


def test_consistent_loss_is_worse_and_unpaired_seeds_are_ignored():
    rows = _rows("base", [0.95, 0.96], [0.9, 0.9]) + _rows("meanpool", [0.93, 0.945, 0.99], [0.9, 0.9, 0.9])
    s = summarize(rows, ["base", "meanpool"])[1]
    assert s["paired_seeds"] == "0 1" and s["verdict"] == "worse" and s["runs"] == 3


def test_folds_pair_on_seed_and_fold():
    rows = [{"candidate": c, "seed": 0, "fold": f, "best_val_macro_f1": v, "test_macro_f1": 0.9}
            for c, vals in (("base", (0.90, 0.92, 0.94)), ("cues", (0.92, 0.94, 0.96))) for f, v in enumerate(vals)]
    s = summarize(rows, ["base", "cues"])[1]
    assert s["paired_seeds"] == "0/f0 0/f1 0/f2" and s["val_vs_base"] == pytest.approx(0.02)
    assert s["verdict"] == "better"  # the same gain on every fold: zero spread


@pytest.mark.parametrize("stopping, held_out, stops", [("held-out", "val", "val"), ("validation", "test", "val")])
def test_fold_splits_cover_training_subjects_once_and_never_the_test_subjects(stopping, held_out, stops):
    """Either design holds every training subject out once; `validation` stops every fold on the configured
    validation subjects, so the held-out subjects that judge a run never also pick its epoch."""
    train = ["1", "3", "5", "6", "7", "8", "11"]
    folds = fold_splits(train, ["25", "26"], 3, stopping)
    assert sorted((x for f in folds for x in f[held_out]), key=int) == train
    for f in folds:
        assert set(f["train"]) | set(f[held_out]) == set(train) and not set(f["train"]) & set(f[held_out])
        assert f["test" if held_out == "val" else "val"] == ["25", "26"]
    assert folds[0][held_out] == ["1", "6", "11"]  # every third subject in natural order, not "11" < "3"
    if stopping == "validation":
        assert all(f[stops] == ["25", "26"] for f in folds)
    with pytest.raises(SystemExit, match="--fold-stopping must be one of"):
        fold_splits(train, ["25"], 3, "test")
    with pytest.raises(SystemExit, match="between 2 and the 7"):
        fold_splits(train, ["25"], 8)
    with pytest.raises(SystemExit, match="needs validation subjects"):
        fold_splits(train, [], 3)


def _fake_run(out, name, config, overrides, val, test):
    """A finished run folder as `fedhar train` leaves it, for the study's tabulation."""
    import json

    from fedhar.config import load_config, save_config

    (out / name).mkdir(parents=True)
    save_config(load_config(config, overrides), out / name / "config.yaml")
    per_class = {"SITTING": 0.9, "STANDING": 0.9}
    (out / name / "metrics.json").write_text(json.dumps({
        "best_val_macro_f1": val, "best_epoch": 3, "epochs_run": 5, "train_seconds": 60.0,
        "test": {"macro_f1": test, "accuracy": test, "per_class_f1": per_class}}))  # fmt: skip


def test_with_validation_stopping_the_held_out_subjects_choose_and_the_stopping_subjects_are_only_reported(tmp_path):
    """Under `--fold-stopping validation` the run's test role holds the held-out training subjects: the verdict
    must be read from it, not from the validation score that picked the epoch (which favours early spikes)."""
    import json

    config = str(Path(__file__).parents[2] / "configs" / "hapt.yaml")
    from fedhar.config import load_config

    split = load_config(config).data.split
    folds = fold_splits([str(x) for x in split.train], [str(x) for x in split.val], 2, "validation")
    for c, (val, test) in {"base": (0.99, 0.90), "lr3e-3": (0.95, 0.93)}.items():  # base: a high stopping score
        for f, split in enumerate(folds):
            roles = [f"data.split.{r}=[{', '.join(x)}]" for r, x in split.items()]
            _fake_run(tmp_path, f"{c}-s0-f{f}", config, ["seed=0", *seeds.CANDIDATES[c], *roles], val, test + 0.01 * f)
    seeds.seed_study(["--out", str(tmp_path), "--config", config, "--candidates", "lr3e-3", "--seeds", "0",
                      "--folds", "2", "--no-run"])  # fmt: skip
    record = json.loads((tmp_path / "seed_study.json").read_text())
    s = {x["candidate"]: x for x in record["summary"]}["lr3e-3"]
    assert s["val_vs_base"] == pytest.approx(0.03) and s["test_vs_base"] == pytest.approx(-0.04)
    assert s["verdict"] == "better" and record["fold_stopping"] == "validation"
    assert record["chosen_on"].startswith("each fold's held-out training subjects")


def test_study_reads_the_base_and_stops_on_runs_with_other_settings(tmp_path):
    """`--candidates X` alone still judges X against the finished base runs; a finished run whose saved config
    differs from what the study asks for now (another override) stops the study, naming the setting."""
    import json

    config = str(Path(__file__).parents[2] / "configs" / "hapt.yaml")
    for seed in (0, 1):
        _fake_run(tmp_path, f"base-s{seed}", config, [f"seed={seed}"], 0.95, 0.94)
        _fake_run(tmp_path, f"meanpool-s{seed}", config, [f"seed={seed}", "model.pooling=mean"], 0.96, 0.95)
    argv = ["--out", str(tmp_path), "--config", config, "--candidates", "meanpool", "--seeds", "0", "1", "--no-run"]
    seeds.seed_study(argv)
    summary = {s["candidate"]: s for s in json.loads((tmp_path / "seed_study.json").read_text())["summary"]}
    assert summary["meanpool"]["paired_seeds"] == "0 1" and summary["meanpool"]["val_vs_base"] == pytest.approx(0.01)
    with pytest.raises(SystemExit, match=r"other settings \(train.lr\)"):
        seeds.seed_study([*argv, "train.lr=0.002"])


def test_the_studys_overrides_set_the_base_and_a_candidate_changes_it():
    """`... train.augment.mixup_alpha=0` re-creates the earlier default as the base; the mixup candidate must still
    run with mixup on top of it, not have its own setting undone by the study's."""
    import argparse

    from fedhar.benchmarks.seeds import _settings
    from fedhar.config import load_config

    args = argparse.Namespace(overrides=["train.augment.mixup_alpha=0"], fold_splits=[])
    config = str(Path(__file__).parents[2] / "configs" / "hapt.yaml")
    assert load_config(config, _settings(args, "base", 0, None)).train.augment.mixup_alpha == 0
    assert load_config(config, _settings(args, "mixup", 0, None)).train.augment.mixup_alpha == 0.2
