"""continual.ewc_importance=product: ewc's Fisher and penalty on each LoRA layer's W = scaling·B·A (tiny backbone)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from torch import nn

from fedhar.continual import regularize
from fedhar.errors import CheckpointError, ConfigError
from fedhar.model.state import expected_spec, get_trainable_state, set_trainable_state
from tests.continual.test_continual_federation import _server_task_identity, results, run  # noqa: F401
from tests.continual.test_schedule import cfg, tiny_model

PRODUCT = ["continual.method=ewc", "continual.ewc_importance=product", "continual.fisher_windows=32",
           "continual.reg_strength=2"]  # fmt: skip


def toy_lora(seed: int = 0) -> nn.Module:
    """Linear(5→4) under LoRA (r=2, alpha=6: scaling 3), tanh, a trainable Linear(4→3) head; B non-zero."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(5, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x))).mean(dim=1)  # [batch, tokens, 5] → [batch, 3]

    model = get_peft_model(Toy(), LoraConfig(r=2, lora_alpha=6, lora_dropout=0.0, target_modules=["body"]))
    for p in model.base_model.model.head.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model


def test_the_product_gradient_is_autograd_of_an_explicit_delta_w():
    model = toy_lora()
    (layer,) = regularize.lora_layers(model)
    assert layer.scaling == 3.0 and layer.shape == (4, 5) and layer.key.endswith("body.delta_w")
    x, y = torch.randn(6, 7, 5), torch.tensor([0, 1, 2, 0, 1, 2])  # 6 windows of 7 tokens
    grads: dict = {}
    handles = regularize.product_gradients([layer], grads)
    nn.functional.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    # the reference: the same function with W = scaling·B·A an explicit parameter
    body, head = model.base_model.model.body.base_layer, model.base_model.model.head
    w = nn.Parameter((layer.scaling * layer.b @ layer.a).detach().clone())
    out = head(torch.tanh(nn.functional.linear(x, body.weight + w, body.bias))).mean(dim=1)
    assert torch.allclose(out, model(x), atol=1e-6)  # the same function
    nn.functional.cross_entropy(out, y).backward()
    assert torch.allclose(grads[layer.key], w.grad, atol=1e-6, rtol=1e-5)
    assert w.grad.abs().max() > 1e-3


def test_importance_spec_replaces_a_and_b_by_the_product_in_the_models_order():
    model = toy_lora()
    assert list(regularize.importance_spec(model, False)) == list(expected_spec(model))
    spec = regularize.importance_spec(model, True)
    assert [k.rsplit(".", 2)[-2:] for k in spec] == [["body", "delta_w"], ["head", "weight"], ["head", "bias"]]
    assert list(spec.values())[0] == ((4, 5), np.dtype("float32"))


def test_the_product_penalty_is_the_hand_computed_sum_and_zero_at_the_anchor():
    model = toy_lora()
    (layer,) = regularize.lora_layers(model)
    anchor = get_trainable_state(model)
    spec = regularize.importance_spec(model, True)
    rng = np.random.default_rng(3)
    importance = {k: rng.uniform(0.1, 2.0, shape).astype(np.float32) for k, (shape, _) in spec.items()}
    penalty = regularize.anchor_penalty(model, anchor, importance, strength=0.7)
    assert penalty(model).item() == pytest.approx(0.0, abs=1e-10)
    moved = {k: (v + rng.normal(0, 0.3, v.shape)).astype(np.float32) for k, v in anchor.items()}
    set_trainable_state(model, moved)
    s = layer.scaling
    a, b, a0, b0 = (d[n].astype(np.float64) for d, n in ((moved, layer.a_name), (moved, layer.b_name),
                                                           (anchor, layer.a_name), (anchor, layer.b_name)))  # fmt: skip
    by_hand = (importance[layer.key] * (s * b @ a - s * b0 @ a0) ** 2).sum()
    for name in spec:
        if name != layer.key:  # the head: the per-parameter term
            by_hand += (importance[name] * (moved[name].astype(np.float64) - anchor[name]) ** 2).sum()
    value = penalty(model)
    assert value.item() == pytest.approx(0.5 * 0.7 * by_hand, rel=1e-5)
    value.backward()
    assert layer.a.grad.abs().max() > 0 and layer.b.grad.abs().max() > 0  # the pull reaches both factors
    # the per-parameter importance (today's) still pulls A and B apart
    plain = {k: np.ones_like(v) for k, v in anchor.items()}
    expected = sum(((moved[k].astype(np.float64) - anchor[k]) ** 2).sum() for k in anchor)
    assert regularize.anchor_penalty(model, anchor, plain, 1.0)(model).item() == pytest.approx(0.5 * expected, rel=1e-5)


@pytest.fixture(scope="module")
def har_model_and_windows():
    model, train = tiny_model(cfg(*PRODUCT))
    rng = np.random.default_rng(1)
    state = get_trainable_state(model)
    set_trainable_state(model, {k: (rng.normal(0, 0.2, v.shape).astype(v.dtype) if "lora_B" in k else v)
                                for k, v in state.items()})  # fmt: skip
    return model, train.subset(np.arange(len(train)) < 40)


def test_the_product_fisher_of_the_har_model_is_autograd_of_an_explicit_delta_w(har_model_and_windows):
    """fisher_diagonal(product=True) on the tiny-llama model against W's gradient taken by autograd: every LoRA
    layer gets an explicit zero parameter E added to its output as E·x (∂L/∂E = ∂L/∂W at E = 0)."""
    model, ws = har_model_and_windows
    layers = regularize.lora_layers(model)
    assert len(layers) == 4  # q_proj and v_proj of 2 blocks
    fisher = regularize.fisher_diagonal(model, ws, 40, seed=0, product=True)
    spec = regularize.importance_spec(model, True)
    assert list(fisher) == list(spec) and not any(".lora_" in k for k in fisher)
    plain = regularize.fisher_diagonal(model, ws, 40, seed=0)
    for k in fisher:  # frontend and head: today's per-parameter Fisher
        if not k.endswith(regularize.PRODUCT):
            assert np.allclose(fisher[k], plain[k], rtol=1e-5, atol=1e-12)
    extra = {layer.key: torch.zeros(layer.shape, requires_grad=True) for layer in layers}
    handles = [layer.module.register_forward_hook(
        lambda m, args, out, e=extra[layer.key]: out + nn.functional.linear(args[0], e)) for layer in layers]
    sums = {k: torch.zeros_like(e) for k, e in extra.items()}
    model.eval()
    idx = np.sort(np.random.default_rng(0).choice(len(ws), 40, replace=False))
    try:
        for start in range(0, 40, regularize.FISHER_BATCH):
            batch = idx[start : start + regularize.FISHER_BATCH]
            for e in extra.values():
                e.grad = None
            logits = model(torch.from_numpy(ws.x[batch]))
            nn.functional.cross_entropy(logits, torch.from_numpy(ws.y[batch])).backward()
            for k, e in extra.items():
                sums[k] += len(batch) * e.grad**2
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    for layer in layers:
        reference = (sums[layer.key] / 40).numpy()
        assert fisher[layer.key].shape == layer.shape and reference.max() > 0
        assert np.allclose(fisher[layer.key], reference, rtol=1e-4, atol=1e-6 * reference.max())


def test_a_two_stage_ewc_product_federation_runs_and_resumes_across_the_boundary_exactly(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from fedhar.federated import server

    summary, full = run(tmp_path, "full", *PRODUCT)
    out = results(full)
    assert out["complete"] and np.asarray(out["matrix"]["test"]["macro_f1"]).shape == (2, 2)
    assert "continual" in summary
    saved = load_file(str(full.file(server.STATE_DIR) / "round-0005" / server.CONTINUAL_STATE_FILE))
    importance = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("importance/")}
    fisher_sum = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("fisher_sum/")}
    products = {k: v for k, v in importance.items() if k.endswith(".delta_w")}
    assert len(products) == 4 and not any(".lora_" in k for k in importance)
    assert set(fisher_sum) == set(importance)
    assert {v.shape for v in products.values()} == {(64, 64), (32, 64)}  # q_proj, v_proj (2 kv heads of 16)
    assert np.mean(np.concatenate([v.ravel() for v in importance.values()])) == pytest.approx(1, rel=1e-4)
    assert all((v >= 0).all() for v in importance.values())
    anchor = {k for k in saved if k.startswith("anchor/")}
    assert any(".lora_A." in k for k in anchor)  # the anchor keeps A and B: B₀·A₀ is formed from them
    rows = json.loads(full.file("rounds.json").read_text())["rounds"]
    assert not any(r["rejected"] for r in rows)

    real_save = server.RoundLoop.save_round

    def stop_at_the_boundary(self, rnd):
        real_save(self, rnd)
        if rnd == 2:
            raise KeyboardInterrupt  # cut off after stage 1's last round (its Fisher sum saved, no importance yet)

    monkeypatch.setattr(server.RoundLoop, "save_round", stop_at_the_boundary)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "part", *PRODUCT)
    monkeypatch.setattr(server.RoundLoop, "save_round", real_save)
    cut = load_file(str(tmp_path / "part" / server.STATE_DIR / "round-0002" / server.CONTINUAL_STATE_FILE))
    assert any(k.startswith("fisher_sum/") and k.endswith(".delta_w") for k in cut)
    run(tmp_path, "part", *PRODUCT, resume=True)
    part = tmp_path / "part"
    assert results(full)["matrix"] == json.loads((part / "continual.json").read_text())["matrix"]
    rows_b = json.loads((part / "rounds.json").read_text())["rounds"]
    assert [r["test_macro_f1"] for r in rows] == [r["test_macro_f1"] for r in rows_b]
    for name in ("trainable.safetensors", server.CONTINUAL_STATE_FILE):
        a = load_file(str(full.file(server.STATE_DIR) / "round-0005" / name))
        b = load_file(str(part / server.STATE_DIR / "round-0005" / name))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # a resume under the other setting is refused in one line, naming the mismatch
    with pytest.raises(CheckpointError, match="another continual.ewc_importance"):
        run(tmp_path, "part", "continual.method=ewc", "continual.fisher_windows=32", "continual.reg_strength=2",
            resume=True)  # fmt: skip


def test_a_hostile_product_fisher_is_rejected():
    from flwr.app import Message, RecordDict

    from fedhar.federated.records import state_to_record
    from fedhar.federated.server import RoundLoop

    loop = RoundLoop.__new__(RoundLoop)
    loop.spec = {"m.lora_A.default.weight": ((2, 3), np.dtype("float32")),
                 "m.lora_B.default.weight": ((4, 2), np.dtype("float32")), "h": ((2,), np.dtype("float32"))}
    loop.fisher_spec = {"m.delta_w": ((4, 3), np.dtype("float32")), "h": ((2,), np.dtype("float32"))}

    def reply(state):
        return Message(RecordDict({regularize.FISHER_REPLY: state_to_record(state)}), dst_node_id=1,
                       message_type="train")  # fmt: skip

    good = {"m.delta_w": np.full((4, 3), 2.0, np.float32), "h": np.array([2.0, 2.0], np.float32)}
    assert loop.check_fisher(reply(good))["m.delta_w"] == pytest.approx(np.ones((4, 3)))
    for bad, why in [
        ({**good, "m.delta_w": np.ones((3, 4), np.float32)}, "shape"),
        ({**good, "m.delta_w": -np.ones((4, 3), np.float32)}, "negative"),
        ({**good, "m.delta_w": np.full((4, 3), np.inf, np.float32)}, "NaN or Inf"),
        ({"m.lora_A.default.weight": np.ones((2, 3), np.float32), "m.lora_B.default.weight": np.ones((4, 2), np.float32),
          "h": good["h"]}, "missing"),  # a per-parameter estimate where the run weights the product
    ]:  # fmt: skip
        with pytest.raises(Exception, match=why):
            loop.check_fisher(reply(bad))


def test_the_client_checks_the_product_importance_it_receives(har_model_and_windows):
    from flwr.app import Message, RecordDict

    from fedhar.federated import client
    from fedhar.federated.records import state_to_record

    model, ws = har_model_and_windows
    job = types.SimpleNamespace(cfg=cfg(*PRODUCT), normalizer=None)
    data = types.SimpleNamespace(train=ws)
    anchor = get_trainable_state(client.process_model(job.cfg, ws, None))
    spec = regularize.importance_spec(client.process_model(job.cfg, ws, None), True)
    good = {k: np.ones(shape, np.float32) for k, (shape, _) in spec.items()}

    def message(importance):
        return Message(RecordDict({regularize.ANCHOR: state_to_record(anchor),
                                   regularize.IMPORTANCE: state_to_record(importance)}),
                       dst_node_id=1, message_type="train")  # fmt: skip

    got_anchor, got = client._continual_records(message(good), job, data)
    assert list(got) == list(spec) and list(got_anchor) == list(anchor)
    key = next(k for k in spec if k.endswith(".delta_w"))
    with pytest.raises(CheckpointError, match="the server's continual importance"):
        client._continual_records(message({**good, key: np.ones((2, 2), np.float32)}), job, data)
    with pytest.raises(CheckpointError, match="the server's continual importance"):
        client._continual_records(message({k: np.ones_like(v) for k, v in anchor.items()}), job, data)


@pytest.mark.parametrize("overrides, message", [
    (["continual.method=ewc", "continual.ewc_importance=delta"], "ewc_importance must be one of"),
    (["continual.method=l2", "continual.ewc_importance=product"], "needs continual.method=ewc"),
    (["continual.method=ewc", "continual.ewc_importance=product", "model.finetune=full"], "model.finetune=lora"),
    (["continual.method=ewc", "continual.ewc_importance=product", "model.kind=deepconvlstm"], "model.kind=llm"),
])  # fmt: skip
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg(*overrides)
    assert cfg("continual.method=ewc").continual.ewc_importance == "parameters"
