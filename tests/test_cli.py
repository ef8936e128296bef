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
    # a second run with the same name never overwrites the first
    assert main(["train", "--config", "configs/hapt.yaml", "--quiet", f"output_dir={out}", "name=t", *TINY,
                 *HAPT_SMALL]) == 0  # fmt: skip
    assert (out / "t-2" / "metrics.json").is_file()
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(run / "checkpoint"), "--data", str(HAPT), "--subjects", "27", "--json", str(report)]) == 0
    evaluated = json.loads(report.read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


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
