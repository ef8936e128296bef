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
        (["evaluate", "/nonexistent", "--data", "."], "not a fedhar checkpoint"),
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
