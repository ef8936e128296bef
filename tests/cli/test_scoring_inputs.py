"""`fedhar evaluate` / `fedhar predict` on inputs that used to be scored wrongly or silently: settings that
describe the training files, units, ensembles of differently cut data, outputs over inputs, labels the
model does not know, recordings with nothing to predict."""

import dataclasses
import json

import numpy as np
import pytest

from fedhar.cli.main import main
from fedhar.config import DataConfig, ModelConfig
from fedhar.errors import CheckpointError, DataError
from fedhar.model.har_model import DataSpec, build_model, windowing_record
from fedhar.model.state import save_checkpoint


def _checkpoint(tiny_windows, folder, classes=("slow", "fast"), **data_settings):
    cut = windowing_record(DataConfig(dataset="generic", **data_settings))
    spec = dataclasses.replace(DataSpec.from_windows(tiny_windows, windowing=cut), label_names=list(classes))
    return str(save_checkpoint(build_model(ModelConfig(kind="deepconvlstm", hidden=16), spec), folder))


def _csv(path, n=320, labels=("slow", "fast"), acc_z="1", timed=True, nan=False):
    header = ("timestamp," if timed else "") + "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"
    rows = [header]
    for i in range(n):
        z = "" if nan else acc_z
        rows.append((f"{i / 50:.2f}," if timed else "") + f"0,0,{z},0,0,0,{labels[0] if i < n // 2 else labels[1]}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture(autouse=True)
def _own_window_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_WINDOW_CACHE", str(tmp_path / "cache"))


def test_training_files_units_and_rate_do_not_describe_new_files(tiny_windows, tmp_path):
    """A model trained on generic CSVs in m/s^2 at 100 Hz scores a CSV in g with its own timestamps: the
    training files' `units`/`sample_rate` options are not applied to it (they described other files)."""
    from fedhar.inference import windows_for_model
    from fedhar.model.state import load_checkpoint

    ckpt = _checkpoint(tiny_windows, tmp_path / "ckpt", loader_options={"units": "acc=m/s^2", "sample_rate": 100})
    ws = windows_for_model(load_checkpoint(ckpt).data, _csv(tmp_path / "g.csv"), "generic")
    assert np.allclose(ws.x[:, 2], 1.0)  # read in g, as the file is; not 1 m/s^2 = 0.10 g


def test_windows_in_other_units_are_refused(tiny_windows, tmp_path, capsys):
    from fedhar.data.recording import SensorLayout

    ckpt = _checkpoint(tiny_windows, tmp_path / "ckpt", classes=tiny_windows.label_names)
    layout = SensorLayout(tiny_windows.layout.channels, tiny_windows.layout.groups, (("acc", "m/s^2"), ("gyro", "rad/s")))
    dataclasses.replace(tiny_windows, layout=layout).save(tmp_path / "ms2.npz")
    assert main(["evaluate", ckpt, "--data", str(tmp_path / "ms2.npz")]) == 2
    assert "units {'acc': 'm/s^2', 'gyro': 'rad/s'} differ" in capsys.readouterr().err


def test_an_ensemble_of_differently_cut_or_repeated_checkpoints_is_refused(tiny_windows, tmp_path):
    from fedhar.model.ensemble import load_model

    a = _checkpoint(tiny_windows, tmp_path / "a")
    b = _checkpoint(tiny_windows, tmp_path / "b", overlap=0.0)
    with pytest.raises(CheckpointError, match="how the windows were cut"):
        load_model([a, b])
    with pytest.raises(CheckpointError, match="more than once"):
        load_model([a, str(tmp_path / "a" / ".")])


def test_calibration_options_fail_before_any_data_is_read(tiny_windows, tmp_path, capsys):
    """A pair the model lacks, or no stored calibration, is reported before the data (here: missing) are read."""
    ckpt = _checkpoint(tiny_windows, tmp_path / "ckpt", classes=["SITTING", "STANDING"])
    missing = str(tmp_path / "not-there")
    assert main(["evaluate", ckpt, "--data", missing, "--calibrate", "SITTING", "LAYING"]) == 2
    assert "LAYING" in capsys.readouterr().err
    assert main(["evaluate", ckpt, "--data", missing, "--calibrate", "SITTING", "STANDING"]) == 2
    assert "stores no client calibration" in capsys.readouterr().err


def test_unknown_calibrate_from_subjects_are_an_error(tiny_windows, tmp_path, capsys):
    ws = dataclasses.replace(tiny_windows, label_names=["SITTING", "STANDING", "LAYING"])
    ckpt = _checkpoint(ws, tmp_path / "ckpt", classes=ws.label_names)
    ws.save(tmp_path / "w.npz")
    args = ["evaluate", ckpt, "--data", str(tmp_path / "w.npz"), "--calibrate", "SITTING", "STANDING"]
    assert main([*args, "--subjects", "3", "4", "--calibrate-from", "1", "99"]) == 2
    assert "--calibrate-from subjects ['99'] have no windows" in capsys.readouterr().err
    assert main([*args, "--calibrate-from", "1", "2"]) == 2  # every subject is scored, 1 and 2 too
    assert "pass --subjects with the held-out subjects" in capsys.readouterr().err


def test_outputs_never_overwrite_inputs_or_folders(tiny_windows, tmp_path, capsys):
    ckpt = _checkpoint(tiny_windows, tmp_path / "ckpt")
    rec = _csv(tmp_path / "rec.csv")
    before = (tmp_path / "rec.csv").read_text()
    assert main(["predict", ckpt, rec, "--out", rec]) == 2
    assert "also an input" in capsys.readouterr().err and (tmp_path / "rec.csv").read_text() == before
    assert main(["predict", ckpt, rec, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["evaluate", ckpt, "--data", rec, "--json", rec]) == 2
    assert (tmp_path / "rec.csv").read_text() == before


def test_predict_with_nothing_to_predict_fails(tiny_windows, tmp_path, capsys):
    ckpt = _checkpoint(tiny_windows, tmp_path / "ckpt")
    assert main(["predict", ckpt, _csv(tmp_path / "nan.csv", nan=True)]) == 2
    assert "every window" in capsys.readouterr().err


def test_predict_reads_labels_under_the_models_names(tiny_windows, tmp_path, capsys):
    """The stored label map renames the recording's labels as it renamed the training data's; labels the model
    does not know are named and left out of the agreement count."""
    ckpt = _checkpoint(tiny_windows, tmp_path / "ckpt", label_map={"Slow": "slow"})
    assert main(["predict", ckpt, _csv(tmp_path / "r.csv", labels=("Slow", "jog")), "--out", str(tmp_path / "p.csv")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "labels ['jog'] are not among the model's classes" in err
    labels = {line.rsplit(",", 1)[1] for line in (tmp_path / "p.csv").read_text().splitlines()[1:]}
    assert labels == {"slow", "jog", ""}
    assert "9 windows lie inside one labelled stretch of a class the model knows" in err


def test_evaluate_notes_what_it_could_not_score_and_why(tiny_windows, tmp_path, capsys):
    """Data labels outside the model's classes and --label-map entries that match nothing are noted (and in
    the JSON); a CSV without any usable label says so instead of suggesting other windows."""
    ckpt = _checkpoint(tiny_windows, tmp_path / "ckpt")
    report = tmp_path / "e.json"
    assert main(["evaluate", ckpt, "--data", _csv(tmp_path / "r.csv", labels=("slow", "jog")), "--label-map",
                 "Fats=fast", "--json", str(report)]) == 0  # fmt: skip
    notes = json.loads(report.read_text())["data_notes"]
    assert any("labels ['jog'] are not among the model's classes" in n for n in notes)
    assert any("label_map entries ['Fats'] match no label" in n for n in notes)
    assert "note: labels ['jog']" in " ".join(capsys.readouterr().err.split())
    assert main(["evaluate", ckpt, "--data", _csv(tmp_path / "x.csv", labels=("sit", "jog"))]) == 2
    assert "no sample carries a label of the classes ['slow', 'fast']" in capsys.readouterr().err


def test_evaluate_reads_an_upper_case_csv_name(tiny_windows, tmp_path):
    ckpt = _checkpoint(tiny_windows, tmp_path / "ckpt")
    report = tmp_path / "e.json"
    assert main(["evaluate", ckpt, "--data", _csv(tmp_path / "LAB.CSV"), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["num_windows"] == 18


def test_untrained_backbone_is_flagged_by_evaluate_and_predict(tmp_path, capsys):
    from fedhar.config import shipped_config

    out = tmp_path / "runs"
    assert main(["train", "--config", str(shipped_config("default.yaml")), "--quiet", f"output_dir={out}", "name=t",
                 "model.backbone=tiny-llama", "model.num_layers=1", "train.epochs=1", "train.max_steps_per_epoch=1",
                 "train.device=cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["predict", str(out / "t" / "checkpoint"), _csv(tmp_path / "r.csv", n=300)]) == 0
    assert "UNTRAINED" in capsys.readouterr().err


def test_make_windows_error_names_files_and_cause():
    from fedhar.data.recording import Recording, RecordingSet
    from fedhar.data.windows import make_windows

    rec = Recording(np.zeros((40, 6), np.float32), np.full(40, -1), 50.0, "1", "s", "generic", source="a.csv")
    with pytest.raises(DataError, match=r"of generic \(a.csv\).*no sample carries a label"):
        make_windows(RecordingSet([rec], ["slow"], "generic"), 32)


def test_a_file_with_an_extra_sensor_joins_a_folder(tiny_windows, tmp_path):
    """data.sensors keeps the model's groups in every generic file before their channels are compared: a
    folder where one recording also has a magnetometer is scored, not refused."""
    from fedhar.data.loaders import load_recordings

    folder = tmp_path / "data"
    folder.mkdir()
    _csv(folder / "a.csv")
    lines = (folder / "a.csv").read_text().splitlines()
    with_mag = [lines[0].replace(",label", ",mag_x,mag_y,mag_z,label")]
    with_mag += [line.rsplit(",", 1)[0] + ",30,0,0," + line.rsplit(",", 1)[1] for line in lines[1:]]
    (folder / "b.csv").write_text("\n".join(with_mag) + "\n")
    with pytest.raises(DataError, match="different channels"):
        load_recordings(folder, "generic")
    rs = load_recordings(folder, "generic", sensors=["acc", "gyro"])
    assert [r.layout.num_channels for r in rs.recordings] == [6, 6]
    report = tmp_path / "e.json"
    assert main(["evaluate", _checkpoint(tiny_windows, tmp_path / "ckpt"), "--data", str(folder), "--json",
                 str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["num_windows"] == 36
