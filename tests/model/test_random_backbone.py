"""``model.pretrained: false``: the backbone's shape with seeded random weights (the no-pretraining control),
built from the model's config alone, and rebuilt by ``fedhar evaluate`` from the checkpoint's seed."""

from __future__ import annotations

import json

import pytest
import torch

from fedhar.cli.main import main
from fedhar.config import ModelConfig, load_config
from fedhar.errors import BackboneError, ConfigError
from fedhar.model.backbones import frozen_fingerprint, load_backbone

FAST = ["data.dataset=synthetic", "data.synthetic={subjects: 4, seconds_per_activity: 8}", "data.window=32",
        "model.tokens=8", "data.split.train=[1, 2]", "data.split.val=[3]", "data.split.test=[4]", "train.epochs=1",
        "train.max_steps_per_epoch=2", "train.device=cpu", "model.num_layers=null"]  # fmt: skip


@pytest.fixture
def config_only(tmp_path):
    """A local model folder with a config.json and no weights (a tiny Llama shape, not one of fedhar's TINY)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model("llama", vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                  pad_token_id=5)  # fmt: skip
    folder = tmp_path / "shape-only"
    config.save_pretrained(folder)
    assert not any(folder.glob("*.safetensors"))
    return folder


def _weights(backbone) -> list[torch.Tensor]:
    return [p.detach().clone() for p in backbone.module.parameters()]


def test_random_backbone_needs_the_config_only_and_is_seeded(config_only):
    with pytest.raises(BackboneError):  # pretrained: the weights are not there
        load_backbone(str(config_only), allow_download=False)
    a = load_backbone(str(config_only), seed=3, allow_download=False, pretrained=False)
    b = load_backbone(str(config_only), seed=3, allow_download=False, pretrained=False)
    c = load_backbone(str(config_only), seed=4, allow_download=False, pretrained=False)
    assert a.pretrained is False and a.hidden_size == 32 and a.num_layers == 2 and a.arch == "llama"
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c)))
    assert frozen_fingerprint(a.module) == frozen_fingerprint(b.module) != frozen_fingerprint(c.module)
    assert all(not p.requires_grad for p in a.module.parameters())  # frozen, as a pretrained one


def test_random_named_backbone_has_the_pretrained_shape():
    from fedhar.model.backbones import backbone_cache_dir

    if not (backbone_cache_dir() / "smollm2-135m" / "config.json").is_file():
        pytest.skip("smollm2-135m is not in fedhar's backbone cache")
    real = load_backbone("smollm2-135m", num_layers=1, allow_download=False)
    rand = load_backbone("smollm2-135m", num_layers=1, allow_download=False, pretrained=False)
    assert (real.pretrained, rand.pretrained) == (True, False)
    shapes = {n: p.shape for n, p in real.module.named_parameters() if "embed" not in n}
    assert shapes == {n: p.shape for n, p in rand.module.named_parameters() if "embed" not in n}
    name = next(iter(shapes))
    assert not torch.equal(dict(real.module.named_parameters())[name], dict(rand.module.named_parameters())[name])


@pytest.mark.parametrize("kind", ["deepconvlstm", "transformer"])
def test_a_baseline_has_no_backbone_to_randomise(kind):
    with pytest.raises(ConfigError, match=rf"model.pretrained=false .* kind `{kind}` has none"):
        load_config(None, [f"model.kind={kind}", "model.pretrained=false"])
    assert ModelConfig(kind="llm", pretrained=False).pretrained is False


def test_evaluate_rebuilds_the_random_backbone_and_reproduces_the_test_score(config_only, tmp_path, capsys):
    from fedhar.data.pipeline import split_windows

    out = tmp_path / "runs"
    args = [*FAST, f"model.backbone={config_only}", "model.pretrained=false", "seed=7"]
    assert main(["train", "--quiet", f"output_dir={out}", "name=r", *args]) == 0
    run = out / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    info = json.loads((run / "checkpoint" / "model.json").read_text())
    assert metrics["backbone_pretrained"] is False and "no-pretraining control" in metrics["warning"]
    assert info["model"]["pretrained"] is False and info["init_seed"] == 7 and len(info["random_backbone_sha256"]) == 64
    _, _, test = split_windows(load_config(run / "config.yaml").data, 7)
    test.save(tmp_path / "test.npz")
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(run / "checkpoint"), "--data", str(tmp_path / "test.npz"), "--json", str(report)]) == 0
    evaluated = json.loads(report.read_text())
    assert evaluated["macro_f1"] == pytest.approx(metrics["test"]["macro_f1"], abs=1e-9)
    assert evaluated["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    # another seed regenerates another backbone: the fingerprint catches it, one clear line
    info["init_seed"] = 8
    (run / "checkpoint" / "model.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoint"), "--data", str(tmp_path / "test.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "regenerated from init_seed 8" in err[0] and "not the one it was trained with" in err[0]
