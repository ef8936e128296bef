from pathlib import Path

import pytest

from fedhar.config import apply_overrides, load_config, save_config, shipped_config
from fedhar.errors import ConfigError


def test_defaults_survive_a_save_and_the_shipped_default_only_overrides_them(tmp_path):
    """A saved run's resolved config loads back to the same settings (what `--resume` and the results'
    config.yaml rely on); configs/default.yaml sets only keys the defaults have."""
    cfg = load_config()
    assert cfg.model.backbone == "smollm2-135m"
    shipped = load_config(shipped_config("default.yaml"))
    assert shipped.to_dict().keys() == cfg.to_dict().keys() and shipped.to_dict() != cfg.to_dict()
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").to_dict() == cfg.to_dict()


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.epochs=3", "train.lr=5e-4", "data.classes=[a, b]", "model.num_layers=null"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 5e-4
    assert cfg.data.classes == ["a", "b"]
    assert cfg.model.num_layers is None


def test_subject_ids_may_be_numbers():
    cfg = load_config(None, ["data.split.train=[1, 3]"])
    assert cfg.data.split.train == ["1", "3"]


def test_unknown_key_suggests_fix():
    with pytest.raises(ConfigError, match=r"train.epoch.*did you mean `epochs`"):
        load_config(None, ["train.epoch=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("data.overlap=1.5", "overlap must be in"),
        ("data.train_overlap=1", "train_overlap must be in"),
        ("model.finetune=half", "finetune must be lora, full or frozen"),
        ("federated.strategy=fedmagic", "strategy must be one of"),
        ("train.lr=fast", "train.lr must be a number"),
        ("train.device=tpu", "device must be auto"),
        ("train.augment.rotation_degrees=-5", "train.augment.rotation_degrees must be in"),
        ("train.augment.scale_std=1.5", "train.augment.scale_std must be in"),
        ("train.ema_decay=1", "train.ema_decay must be in"),
        ("model.kind=deepconvlstm model.head_cues=true", "head_cues is an option of kind llm"),
        ("model.kernel_size=4", "kernel_size must be odd"),
        ("model.conv_channels=0", "conv_channels must be >= 1"),
        ("model.kind=transformer model.hidden=30 model.heads=4", "hidden .30. must be a multiple of model.heads"),
        ("model.dropout=1.5", "model.dropout must be in"),
        ("model.lora.alpha=-3", "model.lora.alpha must be positive"),
        ("model.tokens=7", "model.tokens=7 must divide data.window=128 .e.g. model.tokens=8"),
        ("train.max_steps_per_epoch=-1", "max_steps_per_epoch must be >= 1 or null"),
        ("train.eval_batch_size=0", "eval_batch_size must be >= 1"),
        ("train.label_smoothing=2", "label_smoothing must be in"),
        ("train.grad_clip=-1", "weight_decay and grad_clip must be >= 0"),
        ("train.weight_decay=.nan", "train.weight_decay must be a finite number"),
        ("name=.", "leading '.'"),
        ("name=..", "leading '.'"),
    ],
)
def test_bad_values_name_key_and_allowed_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override.split())


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_every_shipped_config_loads_and_round_trips(tmp_path):
    paths = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert {"default.yaml", "hapt.yaml", "continual.yaml"} <= {p.name for p in paths}
    for path in paths:
        cfg = load_config(path)
        save_config(cfg, tmp_path / path.name)
        assert load_config(tmp_path / path.name).to_dict() == cfg.to_dict(), path.name
