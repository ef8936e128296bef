import numpy as np
import pytest
import torch

from fedhar.config import LoraConfig, ModelConfig
from fedhar.errors import BackboneError, ConfigError
from fedhar.model.backbones import load_backbone
from fedhar.model.har_model import DataSpec, build_model, parameter_counts
from fedhar.model.state import get_trainable_state


@pytest.fixture
def spec(tiny_windows):
    return DataSpec.from_windows(tiny_windows)


@pytest.mark.parametrize("backbone, pooling", [("tiny-llama", "last"), ("tiny-gpt2", "last"), ("tiny-bert", "mean")])
def test_llm_model_forward_and_trainable_parts(spec, tiny_windows, backbone, pooling):
    cfg = ModelConfig(backbone=backbone, num_layers=2, tokens=8)
    model = build_model(cfg, spec, seed=0)
    assert model.pooling == pooling
    assert model.backbone_pretrained is False
    logits = model(torch.from_numpy(tiny_windows.x[:5]))
    assert logits.shape == (5, 3)
    names = list(get_trainable_state(model))
    assert any(".lora_A." in n for n in names) and any(".lora_B." in n for n in names)
    assert any(n.startswith("frontend.") for n in names) and any(n.startswith("head.") for n in names)
    # nothing of the frozen backbone trains except the adapters
    assert all(n.startswith(("frontend.", "head.", "norm.")) or ".lora_" in n for n in names)


def test_token_embedding_table_not_kept():
    b = load_backbone("tiny-llama", 2)
    assert b.module.get_input_embeddings().weight.shape[0] == 1


def test_num_layers_truncates_and_checks():
    assert load_backbone("tiny-llama", 1).num_layers == 1
    with pytest.raises(BackboneError, match="only 2 layers"):
        load_backbone("tiny-llama", 5)


def test_unknown_backbone_is_clear():
    with pytest.raises(BackboneError, match="unknown backbone `not-a-model`"):
        load_backbone("not-a-model")


def test_same_seed_same_init(spec):
    cfg = ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8)
    a, b = build_model(cfg, spec, seed=3), build_model(cfg, spec, seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_finetune_modes(spec):
    full = build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8, finetune="full"), spec)
    lora = build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8), spec)
    frozen = build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8, finetune="frozen"), spec)
    counts = [parameter_counts(m)["trainable"] for m in (frozen, lora, full)]
    assert counts[0] < counts[1] < counts[2]
    assert parameter_counts(full)["trainable"] == parameter_counts(full)["total"]


def test_ffa_lora_freezes_a(spec):
    cfg = ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8, lora=LoraConfig(freeze_a=True))
    names = list(get_trainable_state(build_model(cfg, spec)))
    assert not any(".lora_A." in n for n in names) and any(".lora_B." in n for n in names)


def test_bad_lora_targets_and_tokens(spec):
    with pytest.raises(ConfigError, match="not layers"):
        build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8, lora=LoraConfig(targets=["nope"])), spec)
    with pytest.raises(ConfigError, match="must divide the window length"):
        build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=7), spec)


@pytest.mark.parametrize("kind", ["deepconvlstm", "transformer"])
def test_baselines(spec, tiny_windows, kind):
    model = build_model(ModelConfig(kind=kind, tokens=8, hidden=32), spec)
    assert model(torch.from_numpy(tiny_windows.x[:4])).shape == (4, 3)
    assert model.backbone_pretrained is None


def test_normalisation_is_part_of_the_model(spec, tiny_windows):
    model = build_model(ModelConfig(kind="deepconvlstm", hidden=16), spec)
    x = torch.from_numpy(tiny_windows.x)
    z = model.normalize(x).numpy()
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1, atol=1e-3)


def test_stats_token_adds_one_leading_token(spec, tiny_windows):
    from fedhar.model.frontend import ConvProjection

    groups = spec.layout.group_dict
    plain = ConvProjection(groups, 32, 8, 16)
    with_stats = ConvProjection(groups, 32, 8, 16, stats_token=True)
    x = torch.from_numpy(tiny_windows.x[:3])
    assert plain(x).shape == (3, 8, 16) and with_stats(x).shape == (3, 9, 16)
    model = build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8, stats_token=True), spec)
    assert model(x).shape == (3, 3)


def test_window_cues_read_gravity_direction_and_log_sway(spec):
    from fedhar.model.frontend import WindowCues

    cues = WindowCues(spec.layout.group_dict)
    t = torch.arange(64, dtype=torch.float32)
    x = torch.zeros(2, 6, 64)
    x[0, 1] = -0.98  # still phone, gravity along -y
    x[1, 2] = 0.98 + 0.1 * torch.sin(t)  # gravity along z, swaying on z only
    x[1, 3] = 0.05 * torch.sin(t)  # and turning about the gyro's x axis
    c = cues.cues(x)
    assert c.shape == (2, 3 + 6)
    torch.testing.assert_close(c[0, :3], torch.tensor([0.0, -1.0, 0.0]))
    torch.testing.assert_close(c[1, :3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-2, rtol=0)
    sway = torch.exp(c[:, 3:]) - cues.eps
    torch.testing.assert_close(sway[0], torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(sway[1], x[1].std(dim=1))
    assert cues(x).shape == (2, cues.width)


def test_head_cues_reach_the_head_and_train(spec, tiny_windows):
    plain = build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8), spec, seed=0)
    model = build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8, head_cues=True), spec, seed=0)
    x = torch.from_numpy(tiny_windows.x[:4])
    assert model(x).shape == (4, 3)
    assert model.head.in_features == plain.head.in_features + model.cues.width
    assert any(n.startswith("cues.") for n in list(get_trainable_state(model)))
    model.eval()
    tilted = x.clone()
    tilted[:, :3] += torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1)  # gravity added on z: a different posture
    assert not torch.allclose(model(x), model(tilted))


def test_a_backbone_serves_one_model(spec):
    """LoRA is injected in place: a second model on the same module would share the first one's adapters."""
    backbone = load_backbone("tiny-llama", num_layers=2)
    build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8), spec, backbone=backbone)
    with pytest.raises(ValueError, match="already belongs to a model"):
        build_model(ModelConfig(backbone="tiny-llama", num_layers=2, tokens=8), spec, backbone=backbone)
