"""Per-client calibration (the `pair-calibration` post-hoc adapter): a shifted subject is re-split without labels;
one-posture clients are left alone."""

import numpy as np
import pytest

from fedhar.posthoc.pair_calibration import direction_from_statistics, otsu_threshold, pair_statistics, split_per_subject
from fedhar.errors import ConfigError

SIT, STAND, LAY = 0, 1, 2
PAIR = "train.posthoc={name: pair-calibration, classes: [SITTING, STANDING]}"


def test_otsu_cuts_in_the_middle_of_the_gap_between_two_clusters():
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(2.0, 0.3, 20), rng.normal(6.0, 0.3, 20)]
    assert otsu_threshold(values) == pytest.approx(4.0, abs=0.5)


def test_fisher_direction_points_from_the_first_class_to_the_second():
    rng = np.random.default_rng(0)
    cues = np.r_[rng.normal([0, 0], 0.1, (50, 2)), rng.normal([0, 1], 0.1, (50, 2))]
    w = direction_from_statistics(pair_statistics(cues, np.r_[np.zeros(50, bool), np.ones(50, bool)]))
    assert w[1] > 0 and abs(w[0]) < 0.2 * abs(w[1])
    with pytest.raises(ValueError, match="two windows of each class"):
        direction_from_statistics(pair_statistics(cues[:51], np.r_[np.zeros(50, bool), np.ones(1, bool)]))


def _shifted_subject(offset, n=40, seed=0):
    """A subject whose sitting sits at offset and standing at offset + 1 along the cue; the model's
    global boundary (0.5) mislabels it whenever the offset is large."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.full(n, SIT), np.full(n, STAND)]
    cue = np.r_[rng.normal(offset, 0.1, n), rng.normal(offset + 1, 0.1, n)][:, None]
    pred = np.where(cue[:, 0] > 0.5, STAND, SIT)
    return y, cue, pred


def test_a_shifted_subject_is_re_split_without_labels_and_other_classes_are_untouched():
    y, cue, pred = _shifted_subject(-0.45)  # a third of its standing reads as sitting
    y, cue, pred = np.r_[y, [LAY]], np.r_[cue, [[9.0]]], np.r_[pred, [LAY]]
    assert (pred == y).mean() < 0.9
    out, report = split_per_subject(pred, cue, np.full(len(y), "a"), np.array([1.0]), SIT, STAND, typical_gap=1.0)
    assert report["a"]["applied"] and (out == y).all() and report["a"]["gap_ratio"] == pytest.approx(1.0, abs=0.1)
    assert out[-1] == LAY  # windows the model puts outside the pair keep its label


@pytest.mark.parametrize("model_mixes_it_up", [False, True])
def test_a_one_posture_client_keeps_the_models_labels(model_mixes_it_up):
    """Otsu cuts one cluster in two as readily as two clusters, but its halves lie far closer together than the
    typical sitting/standing distance -- whether or not the model already mixed the client up."""
    rng = np.random.default_rng(1)
    cue = rng.normal(0.0, 0.1, (40, 1))  # sitting only; the projections alone look splittable
    pred = np.where(rng.random(40) < 0.4, STAND, SIT) if model_mixes_it_up else np.full(40, SIT)
    out, report = split_per_subject(pred, cue, np.full(40, "b"), np.array([1.0]), SIT, STAND, typical_gap=1.0)
    assert not report["b"]["applied"] and (out == pred).all() and report["b"]["gap_ratio"] < 0.4
    forced, _ = split_per_subject(pred, cue, np.full(40, "b"), np.array([1.0]), SIT, STAND, 1.0, min_gap=0.0)
    assert (forced == STAND).any() and (forced == SIT).any()  # without the guard it would have been split
    with pytest.raises(ValueError, match="typical_gap > 0"):
        split_per_subject(pred, cue, np.full(40, "b"), np.array([1.0]), SIT, STAND, typical_gap=0.0)


def test_the_typical_gap_is_the_distance_between_the_class_means_along_the_direction():
    from fedhar.posthoc.pair_calibration import PairCalibration

    rng = np.random.default_rng(0)
    cues = np.c_[np.r_[rng.normal(0, 0.1, 30), rng.normal(2.0, 0.1, 30)], rng.normal(0, 1, 60)]
    calibration = PairCalibration.from_statistics(pair_statistics(cues, np.r_[np.zeros(30, bool), np.ones(30, bool)]),
                                                  ("SITTING", "STANDING"))  # fmt: skip
    projected = cues @ calibration.direction
    assert calibration.typical_gap == pytest.approx(projected[30:].mean() - projected[:30].mean())
    assert calibration.typical_gap > 0 and calibration.min_gap == 0.7


def test_a_calibration_without_the_typical_gap_is_refused_with_the_fix():
    from fedhar.posthoc.pair_calibration import PairCalibration
    from fedhar.errors import CheckpointError

    old = {"pair": ["SITTING", "STANDING"], "direction": [1.0] * 9, "min_share": 0.2}
    with pytest.raises(CheckpointError, match="--calibrate-from"):
        PairCalibration.from_json(old)


def test_evaluate_scores_per_client_calibration_beside_the_model(posture_run, tmp_path):
    import json

    from fedhar.cli.main import main

    ckpt, data = str(posture_run / "checkpoint"), str(tmp_path / "w.npz")
    out = tmp_path / "eval.json"
    assert main(["evaluate", ckpt, "--data", data, "--subjects", "3", "4", "--calibrate", "SITTING", "STANDING",
                 "--calibrate-from", "1", "2", "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    calibrated = report["calibrated"]
    assert calibrated["fitted_on"] == ["1", "2"] and set(calibrated["per_subject"]) == {"3", "4"}
    assert calibrated["metrics"]["num_windows"] == report["num_windows"]
    assert len(calibrated["direction"]) == 3 + 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--calibrate", "SITTING", "STANDING"], "stores no client calibration"),
        (["--calibrate-from", "1", "2"], "needs --calibrate"),
        (["--calibrate", "SITTING", "STANDING", "--calibrate-from", "3"], "also evaluated"),
        (["--calibrate", "SITTING", "WALKING", "--calibrate-from", "1"], "not among the classes"),
        (["--calibrate", "SITTING", "STANDING", "--calibrate-from", "99"], "no windows"),
        (["--calibrate", "SITTING", "STANDING", "--calibrate-from", "1", "--min-gap", "-1"], "--min-gap must be >= 0"),
    ],
)
def test_evaluate_calibration_errors_are_one_line(posture_run, tmp_path, capsys, extra, message):
    from fedhar.cli.main import main

    ckpt, data = str(posture_run / "checkpoint"), str(tmp_path / "w.npz")
    assert main(["evaluate", ckpt, "--data", data, "--subjects", "3", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_train_fits_stores_and_reports_the_calibration_and_evaluate_reuses_it(tmp_path, capsys):
    import json

    from fedhar.cli.main import main

    base = ["--quiet", f"output_dir={tmp_path}", "data.dataset=synthetic", "model.kind=deepconvlstm", "model.hidden=16",
            "train.epochs=1", "train.device=cpu"]  # fmt: skip
    assert main(["train", *base, "name=cal", PAIR]) == 0
    assert "per-client calibrated SITTING/STANDING, test subjects: macro-F1" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    test = metrics["client_calibrated"]["test"]
    assert test["num_windows"] == metrics["test"]["num_windows"] and set(test["per_subject"]) == set(metrics["subjects"]["test"])
    stored = json.loads((tmp_path / "cal" / "checkpoint" / "model.json").read_text())["posthoc"]
    assert stored["name"] == "pair-calibration" and metrics["posthoc"] == stored
    assert stored["state"]["pair"] == ["SITTING", "STANDING"] and len(stored["state"]["direction"]) == 3 + 6

    # evaluate with the stored direction reproduces the run's calibrated test figure
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(tmp_path / "cal" / "checkpoint"), "--data", str(_synthetic_npz(tmp_path)),
                 "--subjects", *metrics["subjects"]["test"], "--calibrate", "SITTING", "STANDING",
                 "--json", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["calibrated"]["metrics"]["macro_f1"] == pytest.approx(test["macro_f1"])


def _synthetic_npz(tmp_path):
    """The default synthetic windows (what the run trained on) as an .npz: synthetic data has no folder."""
    from fedhar.config import load_config
    from fedhar.data.pipeline import load_windows

    cfg = load_config(None, ["data.dataset=synthetic"])
    path = tmp_path / "synthetic.npz"
    load_windows(cfg.data, cfg.seed).save(path)
    return path


def test_a_bad_calibration_pair_fails_before_training(tmp_path, capsys):
    from fedhar.cli.main import main

    base = ["--quiet", f"output_dir={tmp_path}", "data.dataset=synthetic", "model.kind=deepconvlstm", "train.epochs=1"]
    assert main(["train", *base, "train.posthoc={name: pair-calibration, classes: [SITTING]}"]) == 2
    assert "train.posthoc.classes must be two different class names" in capsys.readouterr().err
    assert main(["train", *base, "train.posthoc={name: pair-calibration, classes: [SITTING, FLYING]}"]) == 2
    assert "not among the classes" in capsys.readouterr().err
    assert main(["train", *base, "train.posthoc={name: pair-calibration, pair: [SITTING, STANDING]}"]) == 2
    assert "unknown config key `train.posthoc.pair`" in capsys.readouterr().err
    assert not any(tmp_path.rglob("metrics.json"))


def _recording_csv(path, seconds=8.0, rate=50.0, seed=0, tilts=(-0.2, 0.2)):
    rng = np.random.default_rng(seed)
    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"]
    for i in range(int(seconds * rate)):
        tilt = tilts[(i // 64) % len(tilts)]  # alternating postures: the pair's cue changes every window
        rows.append(",".join([f"{i / rate:.3f}", f"{tilt + rng.normal(0, 0.02):.4f}", "0.0", "1.0",
                              *(f"{v:.4f}" for v in rng.normal(0, 0.01, 3))]))  # fmt: skip
    path.write_text("\n".join(rows) + "\n")
    return path


def test_predict_applies_the_stored_calibration_to_a_recording_as_one_client(posture_run, tmp_path, capsys):
    import csv

    from fedhar.posthoc.pair_calibration import PairCalibration
    from fedhar.cli.main import main
    from fedhar.inference import predict_recordings
    from fedhar.model.state import load_checkpoint, save_checkpoint

    model = load_checkpoint(posture_run / "checkpoint")
    recording = _recording_csv(tmp_path / "rec.csv")
    plain = tmp_path / "plain.csv"
    assert main(["predict", str(posture_run / "checkpoint"), str(recording), "--out", str(plain)]) == 0
    assert main(["predict", str(posture_run / "checkpoint"), str(recording), "--calibrate"]) == 2
    assert "stores no client calibration" in capsys.readouterr().err

    # acc_x separates the pair in this toy direction; min_gap 0 re-splits whatever the model says
    calibration = PairCalibration("SITTING", "STANDING", np.r_[1.0, np.zeros(8)], typical_gap=0.4, min_gap=0.0)
    stored = save_checkpoint(model, tmp_path / "with-cal", extra={"posthoc": calibration.record()})
    out = tmp_path / "cal.csv"
    assert main(["predict", str(stored), str(recording), "--calibrate", "--out", str(out)]) == 0
    rows, plain_rows = list(csv.DictReader(out.open())), list(csv.DictReader(plain.open()))
    assert [r["start_s"] for r in rows] == [r["start_s"] for r in plain_rows]
    expected, report = predict_recordings(model, [recording], posthoc=calibration)
    assert report["applied"] and report["pair_windows"] >= 2
    assert [r["activity"] for r in rows] == [r["activity"] for r in expected]
    assert [r["model_activity"] for r in rows] == [r["activity"] for r in plain_rows]  # the model's own label kept
    assert "calibration SITTING/STANDING: re-split" in capsys.readouterr().err
    pair = [r for r in plain_rows if r["activity"] in ("SITTING", "STANDING")]
    assert len(pair) >= 2  # the untrained model gives the pair some windows ...
    # ... and the re-split follows the recording's own tilt: both postures appear
    assert len({r["activity"] for r in rows if r["activity"] in ("SITTING", "STANDING")}) == 2


def test_several_recordings_of_one_wearer_are_calibrated_as_one_client(posture_run, tmp_path):
    """One recording per posture: each alone holds one side of the pair, together they hold both."""
    import csv

    from fedhar.posthoc.pair_calibration import PairCalibration
    from fedhar.cli.main import main
    from fedhar.model.state import load_checkpoint, save_checkpoint

    model = load_checkpoint(posture_run / "checkpoint")
    sat = _recording_csv(tmp_path / "sat.csv", tilts=(-0.2,))
    stood = _recording_csv(tmp_path / "stood.csv", seed=1, tilts=(0.2,))
    calibration = PairCalibration("SITTING", "STANDING", np.r_[1.0, np.zeros(8)], typical_gap=0.4)
    stored = save_checkpoint(model, tmp_path / "with-cal", extra={"posthoc": calibration.record()})
    out = tmp_path / "both.csv"
    assert main(["predict", str(stored), str(sat), str(stood), "--calibrate", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["recording"] for r in rows} == {str(sat), str(stood)} and len(rows) == 2 * 24  # (400 - 32) // 16 + 1 each
    pair = {(r["recording"], r["activity"]) for r in rows if r["activity"] in ("SITTING", "STANDING")}
    assert pair, "the untrained model gives the pair some windows"
    assert pair == {(str(sat), "SITTING"), (str(stood), "STANDING")}  # split between the recordings, not inside


def test_predict_leaves_a_one_posture_recording_as_the_model_saw_it_and_says_why(posture_run, tmp_path, capsys):
    import csv

    from fedhar.posthoc.pair_calibration import PairCalibration
    from fedhar.cli.main import main
    from fedhar.model.state import load_checkpoint, save_checkpoint

    model = load_checkpoint(posture_run / "checkpoint")
    sat = _recording_csv(tmp_path / "sat.csv", tilts=(-0.2,))  # sitting only: nothing to re-split
    calibration = PairCalibration("SITTING", "STANDING", np.r_[1.0, np.zeros(8)], typical_gap=0.4)
    stored = save_checkpoint(model, tmp_path / "with-cal", extra={"posthoc": calibration.record()})
    out = tmp_path / "sat-pred.csv"
    assert main(["predict", str(stored), str(sat), "--calibrate", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert all(r["activity"] == r["model_activity"] for r in rows)
    assert "not applied, the split's halves lie only" in capsys.readouterr().err


def test_a_misspelt_pair_class_gets_a_suggestion():
    from fedhar.posthoc.pair_calibration import check_pair

    with pytest.raises(ConfigError, match=r"\['STANDNG'\] not among the classes .*`STANDNG`: did you mean `STANDING`"):
        check_pair(["SITTING", "STANDING", "LAYING"], ["SITTING", "STANDNG"])
    with pytest.raises(ConfigError, match="two different classes"):
        check_pair(["SITTING", "STANDING"], ["SITTING", "SITTING"])
