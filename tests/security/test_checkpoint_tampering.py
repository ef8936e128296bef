"""A tampered or damaged checkpoint: every value read from ``model.json`` is checked like the tensors are, and
loading a checkpoint never reaches the network unless ``--allow-download`` asks for it (issue #20, items 4, 5)."""

from __future__ import annotations

import copy
import json
import math
import shutil
import socket
import subprocess

import numpy as np
import pytest

from fedhar.cli.main import main
from fedhar.config import DataConfig, ModelConfig
from fedhar.data.preprocess import Normalizer
from fedhar.data.recording import IMU6
from fedhar.errors import BackboneError, CheckpointError, FedharError
from fedhar.model.har_model import DataSpec, build_model, windowing_record
from fedhar.model.state import MODEL_FILE, STATE_FILE, load_checkpoint, read_checkpoint, save_checkpoint

LABELS = ["sit", "stand", "walk"]
CALIBRATION = {"pair": ["sit", "stand"], "direction": [0.1] * 9, "typical_gap": 1.0, "min_gap": 0.7}
POSTHOC = {"name": "pair-calibration", "state": CALIBRATION}  # how fedhar stores it since train.posthoc


def _spec(window: int = 32) -> DataSpec:
    norm = Normalizer(np.zeros(6, np.float32), np.ones(6, np.float32))
    return DataSpec(IMU6, window, 50.0, list(LABELS), norm, windowing_record(DataConfig(dataset="generic")))


def _save(folder, cfg: ModelConfig, **extra):
    return save_checkpoint(build_model(cfg, _spec()), folder, extra=extra or None)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An untrained DeepConvLSTM and a tiny-llama (LoRA) checkpoint, both storing a calibration (the DeepConvLSTM
    under the key fedhar wrote before train.posthoc, the tiny-llama as a post-hoc adapter)."""
    base = tmp_path_factory.mktemp("ckpt")
    return {
        "dcl": _save(base / "dcl", ModelConfig(kind="deepconvlstm", hidden=8), client_calibration=CALIBRATION,
                     train_subjects=["1", "2"]),
        "llm": _save(base / "llm", ModelConfig(backbone="tiny-llama", num_layers=1, tokens=8), posthoc=POSTHOC),
    }  # fmt: skip


@pytest.fixture
def ckpt(checkpoints, tmp_path):
    """A fresh copy of the DeepConvLSTM checkpoint to tamper with."""
    return shutil.copytree(checkpoints["dcl"], tmp_path / "ckpt")


@pytest.fixture
def recording(tmp_path):
    rows = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"] + [f"{i / 50:.2f},0,0,1,0,0,0" for i in range(200)]
    path = tmp_path / "rec.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _edit(folder, change) -> None:
    info = json.loads((folder / MODEL_FILE).read_text())
    change(info)
    (folder / MODEL_FILE).write_text(json.dumps(info))


def _set(path: str, value):
    """A change setting the dotted ``path`` of model.json (``data.normalizer.std.2``) to ``value``."""

    def change(info):
        *parents, last = path.split(".")
        node = info
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def _one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, err
    return err


# ---- item 4: the normaliser and the description are validated --------------------------------------------


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("data.normalizer.mean.0", math.nan, "data.normalizer.mean[0]"),
        ("data.normalizer.mean.3", math.inf, "data.normalizer.mean[3]"),
        ("data.normalizer.std.2", 0.0, "data.normalizer.std[2]"),
        ("data.normalizer.std.1", -1.0, "data.normalizer.std[1]"),
        ("data.normalizer.std.0", math.nan, "data.normalizer.std[0]"),
        ("data.normalizer.std.0", "1", "data.normalizer.std[0]"),
        ("data.normalizer.mean", [0.0] * 5, "data.normalizer.mean"),
        ("data.normalizer.std", None, "data.normalizer.std"),
        ("data.normalizer", [], "data.normalizer"),
        ("data.label_names", [], "data.label_names"),
        ("data.label_names", ["sit", "sit", "walk"], "data.label_names"),
        ("data.label_names", [1, 2, 3], "data.label_names[0]"),
        ("data.label_names", ["sit", ""], "data.label_names[1]"),
        ("data.label_names", "sit", "data.label_names"),
        ("data.window_len", 0, "data.window_len"),
        ("data.window_len", -32, "data.window_len"),
        ("data.window_len", "32", "data.window_len"),
        ("data.window_len", 32.5, "data.window_len"),
        ("data.window_len", 10**12, "data.window_len"),
        ("data.sample_rate", 0, "data.sample_rate"),
        ("data.sample_rate", -50.0, "data.sample_rate"),
        ("data.sample_rate", math.nan, "data.sample_rate"),
        ("data.sample_rate", True, "data.sample_rate"),
        ("data.layout.channels", ["acc_x"] * 6, "data.layout.channels"),
        ("data.layout.groups.gyro", [3, 4, 9], "data.layout.groups.gyro[2]"),
        ("data.layout.groups.gyro", [0, 1, 2], "data.layout.groups"),
        ("data.layout.units", {"acc": "g"}, "data.layout.units"),
        ("data.windowing.overlap", 1.5, "data.windowing.overlap"),
        ("data.windowing.label_rule", "any", "data.windowing.label_rule"),
        ("data.windowing.loader_options", {"max_gap_s": "x"}, "data.windowing.loader_options.max_gap_s"),
        ("data.windowing.loader_options", {"rm_rf": True}, "data.windowing.loader_options.rm_rf"),
        ("data.windowing.label_map", {"a": 3}, "data.windowing.label_map.a"),
        ("init_seed", -1, "init_seed"),
        ("init_seed", "0", "init_seed"),
        ("backbone_pretrained", "yes", "backbone_pretrained"),
        ("train_subjects", "1", "train_subjects"),
        ("client_calibration.direction.4", math.nan, "client_calibration.direction[4]"),
        ("client_calibration.direction", [0.1] * 3, "client_calibration.direction"),
        ("client_calibration.pair", ["sit", "run"], "client_calibration.pair"),
        ("client_calibration.typical_gap", 0, "client_calibration.typical_gap"),
        ("client_calibration", [1], "client_calibration"),
        ("model.dropout", math.nan, "model.dropout"),
        ("model.hidden", 0, "model.hidden"),
        ("model.lora", "big", "model.lora"),
    ],
)
def test_a_bad_value_in_model_json_names_the_file_and_the_field(ckpt, path, value, field):
    _edit(ckpt, _set(path, value))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ckpt)
    assert str(ckpt / MODEL_FILE) in str(e.value), str(e.value)
    assert f"`{field}`" in str(e.value) or field in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError):  # what the federated server's resume reads
        read_checkpoint(ckpt)


@pytest.mark.parametrize(
    "path, value, field",
    [
        ("posthoc.state.direction.4", math.nan, "posthoc.state.direction[4]"),
        ("posthoc.state.pair", ["sit", "run"], "posthoc.state.pair"),
        ("posthoc.state.typical_gap", 0, "posthoc.state.typical_gap"),
        ("posthoc.state", [1], "posthoc.state"),
        ("posthoc.name", "nope", "posthoc.name"),
        ("posthoc", "pair-calibration", "posthoc"),
    ],
)
def test_a_bad_post_hoc_adapter_in_model_json_names_the_file_and_the_field(ckpt, path, value, field):
    _edit(ckpt, lambda info: info.update(posthoc={"name": "pair-calibration", "state": info.pop("client_calibration")}))
    load_checkpoint(ckpt)  # the adapter as fedhar stores it now is accepted ...
    _edit(ckpt, _set(path, value))
    with pytest.raises(CheckpointError) as e:  # ... and a bad value in it is not
        load_checkpoint(ckpt)
    assert str(ckpt / MODEL_FILE) in str(e.value) and f"`{field}`" in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_nan_normaliser_is_refused_by_predict_instead_of_nan_confidences(ckpt, recording, tmp_path, capsys):
    """The reported bug: a NaN mean made `fedhar predict` exit 0 and label every window with confidence nan.
    Nothing already written is lost: an existing --out file is left as it was."""
    _edit(ckpt, _set("data.normalizer.mean.0", math.nan))
    out = tmp_path / "pred.csv"
    out.write_text("earlier predictions\n")
    assert main(["predict", str(ckpt), str(recording), "--out", str(out)]) == 2
    _one_error_line(capsys, str(ckpt / MODEL_FILE), "data.normalizer.mean[0]")
    assert out.read_text() == "earlier predictions\n"


@pytest.mark.parametrize("value", [0.0, -2.0])
def test_zero_or_negative_std_is_refused_by_evaluate(ckpt, tmp_path, capsys, value):
    from fixtures.layouts import write_npz

    data = write_npz(tmp_path / "w.npz", length=32)
    _edit(ckpt, _set("data.normalizer.std.4", value))
    out = tmp_path / "metrics.json"
    out.write_text("{}")
    assert main(["evaluate", str(ckpt), "--data", str(data), "--json", str(out)]) == 2
    _one_error_line(capsys, MODEL_FILE, "data.normalizer.std[4]")
    assert out.read_text() == "{}"


def test_labels_must_match_the_heads_size(ckpt):
    _edit(ckpt, _set("data.label_names", ["sit", "stand"]))
    with pytest.raises(CheckpointError, match=r"label_names lists 2 classes but the head .* has 3 outputs"):
        load_checkpoint(ckpt)


def test_a_window_the_model_cannot_read_is_refused(ckpt):
    """DeepConvLSTM's four unpadded convolutions need at least 17 samples: a window of 8 would fail on the first
    recording; it fails at load, as a CheckpointError."""
    _edit(ckpt, lambda info: info["data"].update(window_len=8))
    with pytest.raises(CheckpointError, match="cannot read one window of 8 samples"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("document", [[], [1, 2], "model", 3, 2.5, None, True])
def test_model_json_of_the_wrong_json_type(ckpt, recording, capsys, document):
    (ckpt / MODEL_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        load_checkpoint(ckpt)
    assert main(["predict", str(ckpt), str(recording)]) == 2
    _one_error_line(capsys, str(ckpt / MODEL_FILE), "JSON object")


@pytest.mark.parametrize("field, value", [("model", []), ("model", None), ("data", "x"), ("data", {}),
                                          ("format_version", "1"), ("format_version", True)])  # fmt: skip
def test_top_level_fields_of_the_wrong_type(ckpt, field, value):
    _edit(ckpt, _set(field, value))
    with pytest.raises(CheckpointError, match=str(ckpt / MODEL_FILE)):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(
    "content", [b"{not json", b"\xff\xfe\x00garbage", b"", b"[" * 100_000, b'{"format_version": 1, "model": NaN}']
)
def test_unreadable_model_json(ckpt, recording, capsys, content):
    (ckpt / MODEL_FILE).write_bytes(content)
    assert main(["predict", str(ckpt), str(recording)]) == 2
    _one_error_line(capsys, str(ckpt / MODEL_FILE))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header"])
def test_a_damaged_safetensors_file_is_one_line(ckpt, recording, capsys, damage):
    path = ckpt / STATE_FILE
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": bytes(range(256)) * 4, "empty": b"",
                      "header": (2**40).to_bytes(8, "little") + raw[8:]}[damage])  # fmt: skip
    assert main(["predict", str(ckpt), str(recording)]) == 2
    _one_error_line(capsys, str(path))


def test_a_description_claiming_a_huge_model_fails_before_allocating_it(ckpt):
    """conv_channels=8192, hidden=16384 would be billions of parameters: the model is first built on the meta
    device (shapes only), so the mismatch with the small tensor file is found without allocating them."""
    _edit(ckpt, lambda info: info["model"].update(kind="transformer", conv_channels=8192, hidden=16384, heads=16,
                                                  depth=8, tokens=8))  # fmt: skip
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(ckpt)


def test_an_intact_checkpoint_still_loads_and_predicts(checkpoints, recording, capsys):
    for folder in checkpoints.values():
        model = load_checkpoint(folder)
        assert model.data.label_names == LABELS
    assert main(["predict", str(checkpoints["llm"]), str(recording)]) == 0
    assert "nan" not in capsys.readouterr().out


# ---- item 5: a checkpoint cannot make fedhar reach the network ---------------------------------------------


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Every connection and name lookup, and every pip run of the backbone fetcher, is recorded and refused;
    fedhar's caches are empty and the hub is not in offline mode (so only fedhar's own care keeps it local)."""
    calls: list[str] = []

    def refuse(what):
        def guard(*args, **kwargs):
            calls.append(f"{what} {args[1:2] or args[:1]}")
            raise OSError(f"network disabled by the test ({what})")

        return guard

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))

    def pip(cmd, *args, **kwargs):
        calls.append(f"subprocess {cmd}")
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network disabled by the test")

    monkeypatch.setattr("fedhar.model.backbones.subprocess.run", pip)
    monkeypatch.setenv("FEDHAR_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return calls


@pytest.mark.parametrize("backbone, hint", [("someorg/somemodel", "Hugging Face cache"),
                                            ("smollm2-135m", "fedhar backbones fetch smollm2-135m")])  # fmt: skip
def test_a_checkpoint_naming_a_remote_backbone_fetches_nothing(checkpoints, tmp_path, recording, no_network,
                                                               capsys, backbone, hint):  # fmt: skip
    ckpt = shutil.copytree(checkpoints["llm"], tmp_path / "remote")
    _edit(ckpt, _set("model.backbone", backbone))
    with pytest.raises(BackboneError, match="--allow-download"):
        load_checkpoint(ckpt)
    assert main(["predict", str(ckpt), str(recording)]) == 2
    err = _one_error_line(capsys, f"`{backbone}`", "--allow-download", hint)
    assert main(["evaluate", str(ckpt), "--data", str(recording)]) == 2
    assert _one_error_line(capsys) == err.replace("fedhar predict", "fedhar evaluate")
    assert no_network == [], no_network


@pytest.mark.parametrize("backbone, attempt", [("someorg/somemodel", "hf_hub_download"),
                                               ("smollm2-135m", "subprocess")])  # fmt: skip
def test_allow_download_permits_the_fetch(checkpoints, tmp_path, recording, no_network, capsys, monkeypatch,
                                          backbone, attempt):  # fmt: skip
    def hub_download(repo_id, filename, *args, local_files_only=False, **kwargs):  # fails at once: no retries
        if not local_files_only:
            no_network.append(f"hf_hub_download {repo_id}/{filename}")
        raise OSError(f"{repo_id} is not reachable (network disabled by the test)")

    monkeypatch.setattr("transformers.utils.hub.hf_hub_download", hub_download)
    ckpt = shutil.copytree(checkpoints["llm"], tmp_path / "remote")
    _edit(ckpt, _set("model.backbone", backbone))
    for command in (["predict", str(ckpt), str(recording)], ["evaluate", str(ckpt), "--data", str(recording)]):
        no_network.clear()
        assert main([*command, "--allow-download"]) == 2  # the fetch was tried, and failed: no network here
        _one_error_line(capsys, backbone)
        assert any(call.startswith(attempt) for call in no_network), no_network


# ---- fuzzing: bytes and JSON structure ---------------------------------------------------------------------

#: values a structural mutation puts in place of a model.json field (or of a whole subtree)
VALUES = [None, True, False, 0, -1, 1, 2**70, 1.5, -0.0, math.nan, math.inf, "", "x", "someorg/somemodel", [], [1],
          ["a"], {}, {"a": 1}, [[]]]  # fmt: skip


def _paths(node, path=()):
    yield path
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*path, key))


def _mutate_json(doc, rng):
    doc = copy.deepcopy(doc)
    for _ in range(int(rng.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return doc
        *parents, last = paths[int(rng.integers(len(paths)))]
        node = doc
        for key in parents:
            node = node[key]
        if isinstance(node, dict) and rng.random() < 0.15:
            del node[last]
        else:
            node[last] = copy.deepcopy(VALUES[int(rng.integers(len(VALUES)))])
    return doc


def _mutate_bytes(raw: bytes, rng) -> bytes:
    b = bytearray(raw)
    op = int(rng.integers(4))
    if op == 0:
        return bytes(b[: int(rng.integers(len(b)))])
    if op == 1:
        for _ in range(int(rng.integers(1, 6))):  # half the time inside the header (safetensors' JSON, model.json)
            i = int(rng.integers(min(len(b), 200) if rng.random() < 0.5 else len(b)))
            b[i] ^= 1 << int(rng.integers(8))
    elif op == 2:
        i = int(rng.integers(len(b) + 1))
        b[i:i] = rng.bytes(int(rng.integers(1, 9)))
    else:
        i = int(rng.integers(len(b) + 1))
        b[i:i] = b"\x00\xff\xc3\x28"
    return bytes(b)


def _loads_or_fedhar_error(folder) -> bool:
    from fedhar.model.state import read_checkpoint_info
    from fedhar.posthoc import stored_adapter

    try:
        load_checkpoint(folder)
        stored_adapter(read_checkpoint_info(folder))
    except FedharError:
        return False
    return True  # any other exception type fails the test


@pytest.mark.parametrize("kind", ["dcl", "llm"])
def test_fuzzed_checkpoints_load_or_fail_as_fedhar_errors(checkpoints, tmp_path, kind):
    rng = np.random.default_rng(20)
    source = checkpoints[kind]
    info = json.loads((source / MODEL_FILE).read_text())
    loaded = 0
    for i in range(40):  # structure: fields of the wrong type, removed, out of range
        folder = shutil.copytree(source, tmp_path / f"json-{i}")
        (folder / MODEL_FILE).write_text(json.dumps(_mutate_json(info, rng)))
        loaded += _loads_or_fedhar_error(folder)
    for name in (MODEL_FILE, STATE_FILE):  # bytes: truncated, flipped, inserted
        raw = (source / name).read_bytes()
        for i in range(12):
            folder = shutil.copytree(source, tmp_path / f"{name}-{i}")
            (folder / name).write_bytes(_mutate_bytes(raw, rng))
            loaded += _loads_or_fedhar_error(folder)
    assert loaded < 64  # most mutations must be caught, not loaded
