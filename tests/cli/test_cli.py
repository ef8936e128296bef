import json

import numpy as np
import pytest

from fedhar.cli.main import main
from tests.conftest import HAPT, REPO, requires_hapt

TINY = ["model.backbone=tiny-llama", "model.num_layers=2", "train.epochs=1", "train.max_steps_per_epoch=3",
        "train.device=cpu"]  # fmt: skip
HAPT_CONFIG = str(REPO / "configs" / "hapt.yaml")  # not relative: tests run from any folder
HAPT_SMALL = [f"data.path={HAPT}", "data.split.train=[1, 3]", "data.split.val=[25]", "data.split.test=[27]"]


@requires_hapt
def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["train", "--config", HAPT_CONFIG, "--quiet", f"output_dir={out}", "name=t", *TINY, *HAPT_SMALL])
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
    assert main(["train", "--config", HAPT_CONFIG, "--quiet", f"output_dir={out}", "name=t", *TINY,
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
    with (tmp_path / "pred.csv").open(newline="") as f:
        pred = list(csv.DictReader(f))
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


PREDICT_COLUMNS = ["start_s", "end_s", "activity", "confidence"]


def _distinct_checkpoint(tiny_windows, folder):
    """An untrained DeepConvLSTM with its weight matrices scaled up 8x: untrained, every window gets nearly the
    same confidence; scaled, windows get clearly different ones, so a prediction written on the wrong row shows."""
    import torch

    from fedhar.config import ModelConfig
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import save_checkpoint

    model = build_model(ModelConfig(kind="deepconvlstm", hidden=16), DataSpec.from_windows(tiny_windows))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(8.0)
    return save_checkpoint(model, folder)


def _raw_recording(path, t0: float = 0.0, n: int = 200, nan_rows=(), jitter: bool = False):
    """A 50 Hz CSV of raw samples (the same values for every call); timestamps from ``t0`` s, every tenth sample
    0.003 s late with ``jitter`` (then it is put on a uniform grid), empty acc_x cells at ``nan_rows``."""
    import numpy as np

    values = np.random.default_rng(0).normal(0, 0.5, (n, 6))
    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"]
    for i in range(n):
        t = t0 + i / 50 + (0.003 if jitter and i % 10 == 5 else 0.0)
        cells = [f"{v:.4f}" for v in values[i]]
        if i in nan_rows:
            cells[0] = ""
        rows.append(",".join([f"{t:.3f}", *cells]))
    path.write_text("\n".join(rows) + "\n")
    return path


def _predict(ckpt, recordings, out):
    import csv

    assert main(["predict", str(ckpt), *map(str, recordings), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_predict_columns_in_order(tiny_windows, tmp_path):
    """One recording: start_s,end_s,activity,confidence exactly; several: `recording` first, each recording's
    windows timed from its own first sample."""
    ckpt = _tiny_checkpoint(tiny_windows, tmp_path / "ckpt")
    a, b = _raw_recording(tmp_path / "a.csv"), _raw_recording(tmp_path / "b.csv", n=120)
    header, one = _predict(ckpt, [a], tmp_path / "one.csv")
    assert header == PREDICT_COLUMNS
    assert (tmp_path / "one.csv").read_text().startswith("start_s,end_s,activity,confidence\n")
    header, two = _predict(ckpt, [a, b], tmp_path / "two.csv")
    assert header == ["recording", *PREDICT_COLUMNS]
    assert [r["recording"] for r in two] == [str(a)] * len(one) + [str(b)] * ((120 - 32) // 16 + 1)
    timed = ["start_s", "end_s", "activity"]
    assert [{k: r[k] for k in timed} for r in two[: len(one)]] == [{k: r[k] for k in timed} for r in one]  # as alone
    assert two[len(one)]["start_s"] == "0.0" and two[len(one) + 1]["start_s"] == "0.32"


@pytest.mark.parametrize("rate", [50, 100], ids=["model-rate", "resampled"])
def test_predict_copies_a_label_column_per_window(tiny_windows, tmp_path, capsys, rate):
    """A recording with a label column: each window gets the label all its samples carry, "" where it straddles
    a change or an unlabelled stretch (the `inside` rule), also after resampling to the model's rate; the
    summary line counts the windows whose activity matches their label."""
    import numpy as np

    ckpt = _tiny_checkpoint(tiny_windows, tmp_path / "ckpt")
    n = 4 * rate  # 4 s: 0-1.6 s slow, 1.6-2.4 s unlabelled, 2.4-4 s fast
    values = np.random.default_rng(0).normal(0, 0.5, (n, 6))
    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"]
    for i in range(n):
        t = i / rate
        label = "slow" if t < 1.6 else "" if t < 2.4 else "fast"
        rows.append(",".join([f"{t:.4f}", *(f"{v:.4f}" for v in values[i]), label]))
    (tmp_path / "rec.csv").write_text("\n".join(rows) + "\n")
    header, pred = _predict(ckpt, [tmp_path / "rec.csv"], tmp_path / "pred.csv")
    assert header == [*PREDICT_COLUMNS, "label"]
    for r in pred:
        start, end = float(r["start_s"]), float(r["end_s"])
        expected = "slow" if end <= 1.6 else "fast" if start >= 2.4 else ""
        assert r["label"] == expected, r
    labelled = [r for r in pred if r["label"]]
    assert {r["label"] for r in labelled} == {"slow", "fast"}
    agree = sum(r["activity"] == r["label"] for r in labelled)
    out = " ".join(capsys.readouterr().err.split())  # the console writes to stderr
    assert f"{len(labelled)} windows lie inside one labelled stretch" in out and f"label on {agree} (" in out


@pytest.mark.parametrize("jitter", [False, True], ids=["uniform", "gridded"])
def test_predict_times_windows_from_the_recordings_first_sample(tiny_windows, tmp_path, jitter):
    """start_s/end_s are seconds from the recording's first sample (inference.predict_recordings), not the
    file's clock: a recording whose timestamps start at 100 s predicts exactly as the same one starting at 0 s,
    whether its samples are kept as they are (near-uniform) or put on a uniform grid (jittered)."""
    import numpy as np

    ckpt = _distinct_checkpoint(tiny_windows, tmp_path / "ckpt")
    _, at0 = _predict(ckpt, [_raw_recording(tmp_path / "t0.csv", jitter=jitter)], tmp_path / "p0.csv")
    _, at100 = _predict(ckpt, [_raw_recording(tmp_path / "t100.csv", 100.0, jitter=jitter)], tmp_path / "p100.csv")
    assert len(at100) == len(at0) == (200 - 32) // 16 + 1
    assert [float(r["start_s"]) for r in at100] == pytest.approx([0.32 * i for i in range(len(at100))])
    assert [float(r["end_s"]) for r in at100] == pytest.approx([0.32 * i + 0.64 for i in range(len(at100))])
    assert [(r["start_s"], r["end_s"], r["activity"]) for r in at100] == [
        (r["start_s"], r["end_s"], r["activity"]) for r in at0]  # fmt: skip
    np.testing.assert_allclose([float(r["confidence"]) for r in at100], [float(r["confidence"]) for r in at0],
                               atol=1e-4)  # fmt: skip


def test_predict_leaves_windows_with_nan_samples_empty(tiny_windows, tmp_path):
    """A window holding a NaN sample (an empty cell) gets no prediction: an empty activity and a NaN confidence
    (inference.predict_recordings); it keeps its row and times, and every later window keeps its own times and
    the prediction it gets without the gap (not its neighbour's)."""
    import math

    ckpt = _distinct_checkpoint(tiny_windows, tmp_path / "ckpt")
    _, clean = _predict(ckpt, [_raw_recording(tmp_path / "clean.csv")], tmp_path / "clean-pred.csv")
    _, gap = _predict(ckpt, [_raw_recording(tmp_path / "gap.csv", nan_rows={40})], tmp_path / "gap-pred.csv")
    assert len(gap) == len(clean) == (200 - 32) // 16 + 1
    assert len({r["confidence"] for r in clean}) == len(clean)  # windows tell apart: a shifted row would show
    assert [(r["start_s"], r["end_s"]) for r in gap] == [(r["start_s"], r["end_s"]) for r in clean]
    holed = [i for i, r in enumerate(gap) if r["activity"] == ""]
    assert holed == [1, 2]  # windows [16, 48) and [32, 64) hold sample 40
    assert all(math.isnan(float(gap[i]["confidence"])) for i in holed)
    for i in sorted(set(range(len(gap))) - set(holed)):
        assert gap[i]["activity"] == clean[i]["activity"] != "", i
        assert float(gap[i]["confidence"]) == pytest.approx(float(clean[i]["confidence"]), abs=1e-4), i


def test_low_label_protocol_on_synthetic_data(tmp_path):
    rc = main(["train", "--quiet", f"output_dir={tmp_path}", "name=ll", "data.dataset=synthetic", "model.kind=deepconvlstm",
               "model.hidden=16", "train.epochs=1", "data.labelled_per_class=5", "train.device=cpu"])  # fmt: skip
    assert rc == 0
    metrics = json.loads((tmp_path / "ll" / "metrics.json").read_text())
    assert metrics["windows"]["train"] == 6 * 5
    assert "SYNTHETIC" in metrics["data_note"]


def test_overrides_may_follow_options(tmp_path):
    rc = main(["train", f"output_dir={tmp_path}", "--quiet", "name=mixed", "data.dataset=synthetic",
               "model.kind=deepconvlstm", "--config", HAPT_CONFIG, "model.hidden=16", "train.epochs=1",
               "data.classes=null", "data.path=null", "data.split.train=null", "data.split.val=null",
               "data.split.test=null"])  # fmt: skip
    assert rc == 0 and (tmp_path / "mixed" / "metrics.json").is_file()
    # the run's resolved config: every override, before the options or after them, over the config file's values
    from fedhar.config import load_config

    cfg = load_config(tmp_path / "mixed" / "config.yaml")
    assert (cfg.name, cfg.data.dataset, cfg.model.kind, cfg.model.hidden, cfg.train.epochs) == (
        "mixed", "synthetic", "deepconvlstm", 16, 1)  # fmt: skip
    assert cfg.data.classes is None and cfg.data.path is None
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (None, None, None)
    # what no override touched comes from configs/hapt.yaml, not the defaults
    assert (cfg.train.batch_size, cfg.federated.rounds, cfg.model.tokens) == (32, 20, 16)
    assert cfg.train.batch_size != type(cfg.train)().batch_size


def test_synthetic_train_writes_the_whole_run_folder(tmp_path):
    """Every file README lists for a run folder, from a DeepConvLSTM on synthetic data (no HAPT needed)."""
    import csv

    from fedhar.config import load_config
    from fedhar.model.state import load_checkpoint

    assert main(["train", "--quiet", f"output_dir={tmp_path}", "name=syn", "seed=3", "data.dataset=synthetic",
                 "model.kind=deepconvlstm", "model.hidden=16", "train.epochs=2",
                 "train.device=cpu"]) == 0  # fmt: skip
    run = tmp_path / "syn"
    for f in ("config.yaml", "run.json", "epochs.csv", "metrics.json", "learning_curves.png", "confusion_matrix.png",
              "checkpoint/model.json", "checkpoint/trainable.safetensors"):  # fmt: skip
        assert (run / f).is_file() and (run / f).stat().st_size > 0, f
    for png in ("learning_curves.png", "confusion_matrix.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []  # atomic writes left no temp files
    cfg = load_config(run / "config.yaml")
    resolved = (cfg.name, cfg.seed, cfg.data.dataset, cfg.model.kind, cfg.model.hidden)
    assert resolved == ("syn", 3, "synthetic", "deepconvlstm", 16)
    meta = json.loads((run / "run.json").read_text())
    assert meta["kind"] == "train" and meta["name"] == "syn" and meta["seed"] == 3
    assert meta["versions"]["torch"].startswith("2.13") and {"python", "fedhar", "numpy"} <= set(meta["versions"])
    with (run / "epochs.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 2  # one row per epoch
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["synthetic_data"] is True and "SYNTHETIC" in metrics["data_note"]
    confusion = np.asarray(metrics["test"]["confusion_matrix"])
    assert metrics["epochs_run"] == 2 and metrics["windows"]["test"] == confusion.sum()
    assert metrics["test"]["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())  # the matrix's
    info = json.loads((run / "checkpoint" / "model.json").read_text())
    assert info["seed"] == 3 and info["synthetic_data"] is True and info["model"]["kind"] == "deepconvlstm"
    assert load_checkpoint(run / "checkpoint").data.label_names == list(metrics["test"]["support"])  # it loads back


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
               "train.posthoc={name: pair-calibration, classes: [SITTING, STANDING]}"])  # fmt: skip
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
    assert main(["train", "--config", HAPT_CONFIG, "--quiet", f"output_dir={out}", "name=w", *TINY,
                 *HAPT_SMALL]) == 0  # fmt: skip
    report = tmp_path / "e.json"
    assert main(["evaluate", str(out / "w" / "checkpoint"), "--data", str(HAPT), "--subjects", "3", "27",
                 "--json", str(report)]) == 0  # fmt: skip
    assert "subjects ['3'] are training subjects" in capsys.readouterr().err
    untrained, seen = json.loads(report.read_text())["warnings"]  # TINY trains on the untrained test backbone
    assert "UNTRAINED" in untrained and seen.startswith("subjects ['3'] are training subjects")
    assert main(["evaluate", str(out / "w" / "checkpoint"), "--data", str(HAPT), "--subjects", "27"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "training subjects" not in err and "UNTRAINED" in err
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


def test_evaluate_one_csv_takes_units_and_rate_and_names_the_file(tiny_windows, tmp_path, monkeypatch, capsys):
    """One CSV without units or time column: its errors name the user's file (not the link the window cache
    reads it through) and the fix; --units and --sample-rate describe it as they do for predict, and a
    dataset with its own loader refuses them."""
    monkeypatch.setenv("FEDHAR_WINDOW_CACHE", str(tmp_path / "cache"))
    ckpt = str(_tiny_checkpoint(tiny_windows, tmp_path / "ckpt"))
    rows = ["acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"]  # acc in m/s^2, recorded at 100 Hz
    rows += [f"0,0,9.81,0,0,0,{'slow' if i < 320 else 'fast'}" for i in range(640)]
    data = tmp_path / "data" / "rec.csv"
    data.parent.mkdir()
    data.write_text("\n".join(rows) + "\n")
    assert main(["evaluate", ckpt, "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data.resolve()}: acc columns have no unit" in err and "--units" in err and "csv-views" not in err
    assert main(["evaluate", ckpt, "--data", str(data), "--units", "acc=m/s^2"]) == 2
    err = capsys.readouterr().err
    assert f"{data.resolve()} line 1: no time column" in err and "--sample-rate" in err and "csv-views" not in err
    report = tmp_path / "e.json"
    assert main(["evaluate", ckpt, "--data", str(data), "--sample-rate", "100", "--units", "acc=m/s^2",
                 "--json", str(report)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["num_windows"] == 18  # resampled to 50 Hz: 160 samples per label
    (tmp_path / "npz").mkdir()
    tiny_windows.save(tmp_path / "npz" / "w.npz")
    assert main(["evaluate", ckpt, "--data", str(tmp_path / "npz"), "--dataset", "hapt", "--units", "acc=g"]) == 2
    assert "--units and --sample-rate describe CSV files" in capsys.readouterr().err
    assert main(["evaluate", ckpt, "--data", str(tmp_path / "npz" / "w.npz"), "--sample-rate", "50"]) == 2
    assert "is a saved window set" in capsys.readouterr().err


def test_evaluate_applies_training_only_settings_to_the_same_loader(tiny_windows, tmp_path, monkeypatch):
    """A checkpoint trained with common_labels / a placement / loader options on one dataset still scores a
    CSV whose labels are already the common names: those settings only apply to their own loader."""
    import dataclasses

    from fedhar.config import DataConfig, ModelConfig
    from fedhar.model.har_model import DataSpec, build_model, windowing_record
    from fedhar.model.state import save_checkpoint

    monkeypatch.setenv("FEDHAR_WINDOW_CACHE", str(tmp_path / "cache"))
    cut = windowing_record(DataConfig(dataset="pamap2", placement="chest", common_labels=True,
                                      loader_options={"optional": True}))  # fmt: skip
    assert cut["dataset"] == "pamap2" and cut["loader_options"] == {"optional": True}
    spec = dataclasses.replace(DataSpec.from_windows(tiny_windows, windowing=cut), label_names=["sitting", "walking"])
    ckpt = save_checkpoint(build_model(ModelConfig(kind="deepconvlstm", hidden=16), spec), tmp_path / "ckpt")
    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"]
    rows += [f"{i / 50:.2f},0,0,1,0,0,0,{'sitting' if i < 160 else 'walking'}" for i in range(320)]
    (tmp_path / "rec.csv").write_text("\n".join(rows) + "\n")
    report = tmp_path / "e.json"
    assert main(["evaluate", str(ckpt), "--data", str(tmp_path / "rec.csv"), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["num_windows"] == 18
