"""The post-hoc adapter interface (fedhar/posthoc/): registry, config, what travels and is stored, old checkpoints.

Pair calibration's own maths is in tests/posthoc/test_pair_calibration.py; here only what any adapter goes through."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from fedhar import posthoc
from fedhar.config import load_config
from fedhar.errors import CheckpointError, ConfigError
from fedhar.posthoc.pair_calibration import PairCalibration, PairCalibrationConfig

PAIR = "train.posthoc={name: pair-calibration, classes: [SITTING, STANDING]}"


def test_train_posthoc_is_parsed_into_the_adapters_typed_config():
    config = posthoc.configured(load_config(None, [PAIR, "train.posthoc.min_gap=0.5"]))
    assert isinstance(config, PairCalibrationConfig) and config.classes == ["SITTING", "STANDING"]
    assert config.min_gap == 0.5
    assert posthoc.configured(load_config(None, [])) is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.posthoc={name: pair-calibraton}", r"`pair-calibraton` is not a post-hoc adapter; did you mean "
                                                  r"`pair-calibration`\? known: \['pair-calibration'\]"),
        ("train.posthoc={name: smoothing}", r"train.posthoc.name `smoothing` is not a post-hoc adapter; known: "
                                            r"\['pair-calibration'\]"),
        ("train.posthoc={name: pair-calibration, classes: [SITTING]}", "classes must be two different class names"),
        ("train.posthoc={name: pair-calibration, clases: [SITTING, STANDING]}", "did you mean `classes`"),
        ("train.posthoc={name: pair-calibration, classes: [SITTING, STANDING], min_gap: -1}", "min_gap must be >= 0"),
    ],
)
def test_an_unknown_adapter_or_option_is_a_config_error_naming_what_is_known(override, message):
    with pytest.raises(ConfigError, match=message):
        posthoc.configured(load_config(None, [override]))


def test_posthoc_needs_a_name():
    with pytest.raises(ConfigError, match=r"train.posthoc needs a `name`"):
        load_config(None, ["train.posthoc={classes: [SITTING, STANDING]}"])


def test_the_old_config_key_names_the_new_one_and_its_empty_default_still_loads():
    with pytest.raises(ConfigError, match=r"`train.client_calibration` moved: use train.posthoc=\{name: "
                                          r"pair-calibration, classes: \[FIRST, SECOND\]\}"):  # fmt: skip
        load_config(None, ["train.client_calibration=[SITTING, STANDING]"])
    # every resolved config.yaml written before the move holds `client_calibration: []` (off): --resume reads it
    assert load_config(None, ["train.client_calibration=[]"]).train.posthoc is None


def _calibration() -> PairCalibration:
    return PairCalibration("SITTING", "STANDING", np.r_[1.0, np.zeros(8)], typical_gap=0.4, min_gap=0.6)


def _posture_windows(n=40, seed=0):
    """Raw 6-axis windows of one client: half tilted one way (sitting), half the other (standing)."""
    rng = np.random.default_rng(seed)
    tilt = np.r_[np.full(n // 2, -0.3), np.full(n // 2, 0.3)]
    x = rng.normal(0, 0.02, (n, 6, 32)).astype(np.float32)
    x[:, 0] += tilt[:, None]
    x[:, 2] += 1.0
    return x


def test_the_record_round_trips_and_the_restored_adapter_applies_the_same():
    from fedhar.data.recording import IMU6

    adapter = _calibration()
    record = json.loads(json.dumps(adapter.record()))  # what a message, a checkpoint and metrics.json hold
    assert record["name"] == "pair-calibration" and set(record["state"]) == {"pair", "direction", "typical_gap",
                                                                              "min_gap"}  # fmt: skip
    restored = posthoc.from_record(record)
    assert isinstance(restored, PairCalibration) and restored.to_json() == adapter.to_json()
    x, pred = _posture_windows(), np.zeros(40, dtype=np.int64)  # the model says SITTING throughout
    names = ["SITTING", "STANDING", "LAYING"]
    mine, theirs = adapter.apply_client(x, pred, names, IMU6), restored.apply_client(x, pred, names, IMU6)
    assert np.array_equal(mine[0], theirs[0]) and mine[1] == theirs[1]
    assert mine[1]["applied"] and set(mine[0].tolist()) == {0, 1}  # both postures found in the client's own windows


def test_a_record_of_an_unknown_adapter_is_a_checkpoint_error_naming_the_known_ones():
    with pytest.raises(CheckpointError, match=r"`smoothing` is not a post-hoc adapter; known: \['pair-calibration'\]"):
        posthoc.from_record({"name": "smoothing", "state": {}})
    with pytest.raises(CheckpointError, match=r"expected \{name, state\}"):
        posthoc.from_record({"name": "pair-calibration"})


def test_a_name_is_registered_once():
    @dataclass
    class Twin(PairCalibrationConfig):
        pass

    with pytest.raises(ValueError, match="already registered"):
        posthoc.register(Twin)
    assert posthoc.REGISTRY["pair-calibration"] is PairCalibrationConfig


def test_a_checkpoint_written_before_posthoc_still_loads_and_applies(posture_run, tmp_path, capsys):
    """Old layout: the calibration's state under model.json's `client_calibration`, as fedhar wrote it before
    train.posthoc. It loads as the pair-calibration adapter, and evaluate / predict give the same as the new layout."""
    import csv

    from fedhar.cli.main import main
    from fedhar.model.state import load_checkpoint, read_checkpoint_info, save_checkpoint

    model = load_checkpoint(posture_run / "checkpoint")
    old = save_checkpoint(model, tmp_path / "old", extra={"client_calibration": _calibration().to_json()})
    new = save_checkpoint(model, tmp_path / "new", extra={"posthoc": _calibration().record()})
    assert "client_calibration" in json.loads((old / "model.json").read_text())
    stored = posthoc.stored_adapter(read_checkpoint_info(old))
    assert isinstance(stored, PairCalibration) and stored.to_json() == _calibration().to_json()

    data = str(tmp_path / "w.npz")
    for ckpt in (old, new):
        assert main(["evaluate", str(ckpt), "--data", data, "--subjects", "3", "4", "--calibrate", "SITTING",
                     "STANDING", "--min-gap", "0", "--json", str(tmp_path / f"{ckpt.name}.json")]) == 0  # fmt: skip
    reports = [json.loads((tmp_path / f"{n}.json").read_text())["calibrated"] for n in ("old", "new")]
    assert reports[0] == reports[1] and reports[0]["fitted_on"] == "the training subjects of the checkpoint's run"

    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"]
    rows += [f"{i / 50:.3f},{(-0.2 if (i // 64) % 2 else 0.2):.3f},0,1,0,0,0" for i in range(400)]
    (tmp_path / "rec.csv").write_text("\n".join(rows) + "\n")
    for ckpt in (old, new):
        assert main(["predict", str(ckpt), str(tmp_path / "rec.csv"), "--calibrate",
                     "--out", str(tmp_path / f"{ckpt.name}.csv")]) == 0  # fmt: skip
    predicted = [list(csv.DictReader((tmp_path / f"{n}.csv").open())) for n in ("old", "new")]
    assert predicted[0] == predicted[1] and "model_activity" in predicted[0][0]
    assert capsys.readouterr().err.count("calibration SITTING/STANDING:") == 2


# ---- a second adapter goes through the trainer without the trainer knowing it -----------------------------


class MajorityVote(posthoc.PostHocAdapter):
    """A toy adapter: every client gets the label the model gives most of its windows (nothing to fit)."""

    name: ClassVar[str] = "majority-vote"
    tag: ClassVar[str] = "voted"

    def apply(self, x, pred, client, label_names, layout):
        out, report = pred.copy(), {}
        for c in np.unique(client):
            rows = client == c
            out[rows] = np.bincount(pred[rows]).argmax()
            report[str(c)] = {"changed": int((out[rows] != pred[rows]).sum())}
        return out, report

    def to_json(self) -> dict:
        return {}

    @classmethod
    def from_json(cls, state: dict) -> MajorityVote:
        return cls()


@dataclass
class MajorityVoteConfig(posthoc.PostHocConfig):
    name: ClassVar[str] = "majority-vote"
    adapter: ClassVar[type[posthoc.PostHocAdapter]] = MajorityVote

    def check(self, label_names):
        pass

    def statistics(self, windows):
        return {"count": np.array([float(len(windows))])}

    def statistics_spec(self, layout):
        return {"count": ((1,), np.dtype("float64"))}

    def from_statistics(self, totals):
        return MajorityVote()


def test_another_adapter_is_fitted_scored_and_stored_by_the_trainer(tmp_path, monkeypatch, capsys):
    from fedhar.cli.main import main
    from fedhar.model.state import read_checkpoint_info

    monkeypatch.setitem(posthoc.REGISTRY, "majority-vote", MajorityVoteConfig)
    assert main(["train", "--quiet", f"output_dir={tmp_path}", "name=vote", "data.dataset=synthetic",
                 "model.kind=deepconvlstm", "model.hidden=16", "train.epochs=1", "train.device=cpu",
                 "train.posthoc={name: majority-vote}"]) == 0  # fmt: skip
    assert "majority-vote, test subjects: macro-F1" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "vote" / "metrics.json").read_text())
    voted = metrics["client_voted"]["test"]
    assert voted["num_windows"] == metrics["test"]["num_windows"]
    assert set(voted["per_subject"]) == set(metrics["subjects"]["test"])
    assert max(voted["per_class_f1"].values()) > 0 and sum(v > 0 for v in voted["per_class_f1"].values()) == 1
    assert metrics["posthoc"] == {"name": "majority-vote", "state": {}}
    assert isinstance(posthoc.stored_adapter(read_checkpoint_info(tmp_path / "vote" / "checkpoint")), MajorityVote)
