"""Ensembles of checkpoints: mean class probabilities, refused across tasks, scored by `fedhar evaluate`."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from fedhar.cli.main import main
from fedhar.config import ModelConfig
from fedhar.errors import CheckpointError
from fedhar.model.ensemble import Ensemble
from fedhar.model.har_model import DataSpec, build_model
from fedhar.model.state import save_checkpoint


def _model(ws, seed):
    return build_model(ModelConfig(kind="deepconvlstm", hidden=16), DataSpec.from_windows(ws), seed=seed).eval()


def test_ensemble_returns_log_mean_probabilities(tiny_windows):
    a, b = _model(tiny_windows, 0), _model(tiny_windows, 1)
    x = torch.from_numpy(tiny_windows.x[:8])
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))  # two seeds, two models
        expected = ((a(x).softmax(-1) + b(x).softmax(-1)) / 2).log()
        assert torch.allclose(Ensemble([a, b])(x), expected, atol=1e-6)
        assert torch.allclose(Ensemble([a])(x), a(x).log_softmax(-1), atol=1e-6)  # one member: its own scores


def test_members_of_different_tasks_are_refused(tiny_windows):
    other = dataclasses.replace(tiny_windows, label_names=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="classes"):
        Ensemble([_model(tiny_windows, 0), _model(other, 0)], ["run-a", "run-b"])
    with pytest.raises(CheckpointError, match="at least one"):
        Ensemble([])


def test_evaluate_scores_several_checkpoints_as_one_ensemble(tiny_windows, tmp_path):
    tiny_windows.save(tmp_path / "w.npz")
    ckpts = [str(save_checkpoint(_model(tiny_windows, s), tmp_path / f"ckpt{s}")) for s in (0, 1)]
    for name, members in (("one", ckpts[:1]), ("two", ckpts)):
        assert main(["evaluate", *members, "--data", str(tmp_path / "w.npz"), "--json", str(tmp_path / f"{name}.json")]) == 0
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["checkpoints"] == ckpts and one["checkpoints"] == ckpts[:1]
    a, b = _model(tiny_windows, 0), _model(tiny_windows, 1)
    with torch.no_grad():
        x = torch.from_numpy(tiny_windows.x)
        pred = ((a(x).softmax(-1) + b(x).softmax(-1)) / 2).argmax(-1).numpy()
    assert two["accuracy"] == pytest.approx(float(np.mean(pred == tiny_windows.y)))


def test_evaluate_refuses_an_ensemble_across_tasks_in_one_line(tiny_windows, tmp_path, capsys):
    tiny_windows.save(tmp_path / "w.npz")
    other = dataclasses.replace(tiny_windows, label_names=["a", "b", "c"])
    first = save_checkpoint(_model(tiny_windows, 0), tmp_path / "first")
    second = save_checkpoint(_model(other, 0), tmp_path / "second")
    assert main(["evaluate", str(first), str(second), "--data", str(tmp_path / "w.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match" in err[0] and "classes" in err[0]


def test_subset_recipe_scores_the_full_set_as_fedhar_evaluate_does(tiny_windows, tmp_path):
    """`simulations/models.py ensemble` averages members' probabilities itself: the whole set must score
    exactly what `fedhar evaluate` gives the same checkpoints as one ensemble."""
    from fedhar.benchmarks.seeds import member_probabilities, score_subsets
    from fedhar.config import ExperimentConfig, save_config

    tiny_windows.save(tmp_path / "w.npz")
    runs = []
    for seed in range(3):
        run = tmp_path / f"base-s{seed}"
        save_checkpoint(_model(tiny_windows, seed), run / "checkpoint")
        cfg = ExperimentConfig()
        cfg.data.path = str(tmp_path / "w.npz")
        cfg.data.split.train, cfg.data.split.val, cfg.data.split.test = ["1", "2"], ["3"], ["4"]
        save_config(cfg, run / "config.yaml")
        runs.append(run)
    probs, parts = member_probabilities(runs, [])
    rows = score_subsets(probs, parts, [1, 3])
    assert [r["size"] for r in rows] == [1, 1, 1, 3]
    report = tmp_path / "e.json"
    assert main(["evaluate", *(str(r / "checkpoint") for r in runs), "--data", str(tmp_path / "w.npz"),
                 "--subjects", "4", "--json", str(report)]) == 0  # fmt: skip
    assert rows[-1]["test_macro_f1"] == round(json.loads(report.read_text())["macro_f1"], 4)
    # a run on a fractional split has no named held-out subjects: refused, not scored 0.0 on no windows
    with pytest.raises(SystemExit, match="names no val / test subjects"):
        member_probabilities(runs, ["data.split.val=null", "data.split.test=null"])
