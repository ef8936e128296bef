import json

import pytest

from fedhar.cli.main import main
from tests.conftest import HAPT, requires_hapt

TINY = ["model.backbone=tiny-llama", "model.num_layers=2", "train.epochs=1", "train.max_steps_per_epoch=3",
        "train.device=cpu"]  # fmt: skip
HAPT_SMALL = [f"data.path={HAPT}", "data.split.train=[1, 3]", "data.split.val=[25]", "data.split.test=[27]"]


@requires_hapt
def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["train", "--config", "configs/hapt.yaml", "--quiet", f"output_dir={out}", "name=t", *TINY, *HAPT_SMALL])
    assert rc == 0
    run = out / "t"
    for f in ("config.yaml", "run.json", "epochs.csv", "metrics.json", "learning_curves.png", "confusion_matrix.png",
              "checkpoint/model.json", "checkpoint/trainable.safetensors"):  # fmt: skip
        assert (run / f).is_file(), f
    meta = json.loads((run / "run.json").read_text())
    assert meta["seed"] == 0 and meta["versions"]["torch"].startswith("2.13")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "UNTRAINED" in metrics["warning"] and metrics["subjects"]["test"] == ["27"]
    assert metrics["device"] == "cpu"
    # a second run with the same name never overwrites the first
    assert main(["train", "--config", "configs/hapt.yaml", "--quiet", f"output_dir={out}", "name=t", *TINY,
                 *HAPT_SMALL]) == 0  # fmt: skip
    assert (out / "t-2" / "metrics.json").is_file()
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(run / "checkpoint"), "--data", str(HAPT), "--subjects", "27", "--by", "subject",
                 "--json", str(report)]) == 0  # fmt: skip
    evaluated = json.loads(report.read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert evaluated["by_subject"]["27"]["accuracy"] == pytest.approx(evaluated["accuracy"])
    assert "by subject" in capsys.readouterr().err  # rich tables go to stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "model.backbone=no-such-model", "data.dataset=hapt", f"data.path={HAPT}"], "unknown backbone"),
        (["train", "train.epochs=-1"], "train.epochs must be >= 1"),
        (["train", "--config", "nope.yaml"], "does not exist"),
        (["evaluate", "/nonexistent", "--data", "."], "checkpoint /nonexistent does not exist"),
    ],
)
def test_errors_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path) if args[-1] == "nope.yaml" else None
    assert main([*args, f"output_dir={tmp_path}"] if args[0] == "train" and "--config" not in args else args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def _tiny_checkpoint(tiny_windows, folder):
    from fedhar.config import ModelConfig
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import save_checkpoint

    model = build_model(ModelConfig(kind="deepconvlstm", hidden=16), DataSpec.from_windows(tiny_windows))
    return save_checkpoint(model, folder)


def test_predict_csv_of_raw_samples(tiny_windows, tmp_path):
    import csv

    import numpy as np

    ckpt = _tiny_checkpoint(tiny_windows, tmp_path / "ckpt")
    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"]
    rng = np.random.default_rng(0)
    for i in range(200):
        rows.append(",".join([f"{i / 50:.3f}", *(f"{v:.4f}" for v in rng.normal(0, 0.5, 6))]))
    (tmp_path / "rec.csv").write_text("\n".join(rows) + "\n")
    assert main(["predict", str(ckpt), str(tmp_path / "rec.csv"), "--out", str(tmp_path / "pred.csv")]) == 0
    pred = list(csv.DictReader((tmp_path / "pred.csv").open()))
    assert len(pred) == (200 - 32) // 16 + 1
    assert pred[1]["start_s"] == "0.32" and pred[1]["end_s"] == "0.96"
    assert all(p["activity"] in tiny_windows.label_names for p in pred)
    assert all(0 < float(p["confidence"]) <= 1 for p in pred)


def test_predict_needs_the_models_channels(tiny_windows, tmp_path, capsys):
    ckpt = _tiny_checkpoint(tiny_windows, tmp_path / "ckpt")
    lines = ["timestamp,acc_x,acc_y,acc_z"] + [f"{i / 50},0,0,1" for i in range(100)]
    (tmp_path / "acc.csv").write_text("\n".join(lines) + "\n")
    assert main(["predict", str(ckpt), str(tmp_path / "acc.csv")]) == 2
    assert "needs channels" in capsys.readouterr().err


def test_low_label_protocol_on_synthetic_data(tmp_path):
    rc = main(["train", "--quiet", f"output_dir={tmp_path}", "name=ll", "data.dataset=synthetic", "model.kind=deepconvlstm",
               "model.hidden=16", "train.epochs=1", "data.labelled_per_class=5", "train.device=cpu"])  # fmt: skip
    assert rc == 0
    metrics = json.loads((tmp_path / "ll" / "metrics.json").read_text())
    assert metrics["windows"]["train"] == 6 * 5
    assert "SYNTHETIC" in metrics["data_note"]


def test_overrides_may_follow_options(tmp_path):
    rc = main(["train", f"output_dir={tmp_path}", "--quiet", "name=mixed", "data.dataset=synthetic",
               "model.kind=deepconvlstm", "--config", "configs/hapt.yaml", "model.hidden=16", "train.epochs=1",
               "data.classes=null", "data.path=null", "data.split.train=null", "data.split.val=null",
               "data.split.test=null"])  # fmt: skip
    assert rc == 0 and (tmp_path / "mixed" / "metrics.json").is_file()


def test_evaluate_refuses_what_it_cannot_score_honestly(tiny_windows, tmp_path, capsys):
    """Unknown subjects, a malformed label map, a missing output folder and another sample rate: one-line
    errors, never a table of zeros or a traceback after the work."""
    import dataclasses

    ckpt = str(_tiny_checkpoint(tiny_windows, tmp_path / "ckpt"))
    tiny_windows.save(tmp_path / "w.npz")
    data = str(tmp_path / "w.npz")
    cases = [
        (["--subjects", "99"], "--subjects ['99'] have no windows"),
        (["--label-map", "oops"], "must look like FROM=TO"),
        (["--json", str(tmp_path / "no" / "o.json")], "does not exist"),
    ]
    for extra, message in cases:
        assert main(["evaluate", ckpt, "--data", data, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    dataclasses.replace(tiny_windows, sample_rate=20.0).save(tmp_path / "w20.npz")
    assert main(["evaluate", ckpt, "--data", str(tmp_path / "w20.npz")]) == 2
    assert "sampled at 20.0 Hz, the model was trained at 50.0 Hz" in capsys.readouterr().err


def test_evaluate_maps_a_window_sets_labels_onto_the_model(tiny_windows, tmp_path):
    import dataclasses

    ckpt = str(_tiny_checkpoint(tiny_windows, tmp_path / "ckpt"))
    renamed = dataclasses.replace(tiny_windows, label_names=["SLOW", "MID", "FAST"])
    renamed.save(tmp_path / "w.npz")
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    tiny_windows.save(tmp_path / "orig.npz")
    assert main(["evaluate", ckpt, "--data", str(tmp_path / "orig.npz"), "--json", str(ours)]) == 0
    assert main(["evaluate", ckpt, "--data", str(tmp_path / "w.npz"), "--json", str(theirs),
                 "--label-map", "SLOW=slow", "MID=mid", "FAST=fast"]) == 0  # fmt: skip
    assert json.loads(theirs.read_text())["accuracy"] == json.loads(ours.read_text())["accuracy"]


def test_a_calibration_the_data_cannot_hold_fails_before_training(tmp_path, capsys):
    rc = main(["train", "--quiet", f"output_dir={tmp_path}", "name=c", "data.dataset=synthetic", "model.kind=deepconvlstm",
               "model.hidden=16", "train.epochs=1", "data.labelled_per_class=1", "train.device=cpu",
               "train.client_calibration=[SITTING, STANDING]"])  # fmt: skip
    assert rc == 2 and "of the pair" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # no training spent on it, and no empty folder shifting later names


def test_run_folders_are_claimed_once(tmp_path):
    from fedhar.config import load_config
    from fedhar.results.run import RunDir

    cfg = load_config(None, [f"output_dir={tmp_path}", "name=r"])
    (tmp_path / "r").mkdir()  # an empty folder is free to take
    assert RunDir.create(cfg, "train").path == tmp_path / "r"
    assert RunDir.create(cfg, "train").path == tmp_path / "r-2"  # taken: never overwritten
    (tmp_path / "r-3").mkdir()
    (tmp_path / "r-3" / "notes.txt").write_text("someone's files")
    assert RunDir.create(cfg, "train").path == tmp_path / "r-4"


def test_evaluate_cuts_a_dataset_folder_as_the_training_data_was_cut(tiny_windows, tmp_path):
    """The checkpoint stores data.overlap (and label rule, placement, label maps): a folder evaluated
    later is windowed the same way, not at a fixed 50 %."""
    import dataclasses

    import numpy as np

    from fedhar.config import DataConfig, ModelConfig
    from fedhar.inference import windows_for_model
    from fedhar.model.har_model import DataSpec, build_model, windowing_record
    from fedhar.model.state import load_checkpoint, save_checkpoint

    folder = tmp_path / "data" / "s1"
    folder.mkdir(parents=True)
    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"]
    rows += [f"{i / 50:.2f},0,0,1,0,0,0,{'slow' if i < 160 else 'fast'}" for i in range(320)]
    (folder / "rec.csv").write_text("\n".join(rows) + "\n")
    for overlap, expected in ((0.0, 10), (0.5, 18)):  # 160 samples per label: 5 or 9 inside windows of 32
        cut = windowing_record(DataConfig(overlap=overlap))
        spec = dataclasses.replace(DataSpec.from_windows(tiny_windows, windowing=cut), label_names=["slow", "fast"])
        ckpt = save_checkpoint(build_model(ModelConfig(kind="deepconvlstm", hidden=16), spec), tmp_path / f"c{overlap}")
        model = load_checkpoint(ckpt)
        assert model.data.windowing["overlap"] == overlap
        ws = windows_for_model(model.data, tmp_path / "data", "generic")
        assert len(ws) == expected and np.bincount(ws.y).tolist() == [expected // 2] * 2


@requires_hapt
def test_evaluate_warns_about_training_subjects_and_synthetic_data(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--config", "configs/hapt.yaml", "--quiet", f"output_dir={out}", "name=w", *TINY,
                 *HAPT_SMALL]) == 0  # fmt: skip
    report = tmp_path / "e.json"
    assert main(["evaluate", str(out / "w" / "checkpoint"), "--data", str(HAPT), "--subjects", "3", "27",
                 "--json", str(report)]) == 0  # fmt: skip
    assert "subjects ['3'] are training subjects" in capsys.readouterr().err
    assert json.loads(report.read_text())["warnings"][0].startswith("subjects ['3'] are training subjects")
    assert main(["evaluate", str(out / "w" / "checkpoint"), "--data", str(HAPT), "--subjects", "27"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["train", "--quiet", f"output_dir={out}", "name=syn", "data.dataset=synthetic", "model.kind=deepconvlstm",
                 "model.hidden=16", "train.epochs=1", "train.device=cpu"]) == 0  # fmt: skip
    info = json.loads((out / "syn" / "checkpoint" / "model.json").read_text())
    assert info["synthetic_data"] is True


def test_evaluate_reads_one_labelled_csv(tiny_windows, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDHAR_WINDOW_CACHE", str(tmp_path / "cache"))
    ckpt = str(_tiny_checkpoint(tiny_windows, tmp_path / "ckpt"))
    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"]
    rows += [f"{i / 50:.2f},0,0,1,0,0,0,{'slow' if i < 160 else 'fast'}" for i in range(320)]
    (tmp_path / "rec.csv").write_text("\n".join(rows) + "\n")
    report = tmp_path / "e.json"
    assert main(["evaluate", ckpt, "--data", str(tmp_path / "rec.csv"), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["num_windows"] == 18  # 9 windows of 32 samples wholly inside each label
