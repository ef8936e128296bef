"""continual.method=olora: a frozen adapter per earlier stage, the new one orthogonal to them (tiny backbone)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from fedhar.continual import olora, schedule
from fedhar.errors import CheckpointError, ConfigError
from fedhar.federated import aggregation
from fedhar.model.state import get_trainable_state, set_trainable_state
from tests.continual.test_continual_federation import LEARN, _server_task_identity, results, run  # noqa: F401
from tests.continual.test_schedule import cfg, tiny_model

OLORA = ["continual.method=olora", "continual.reg_strength=0.1"]


@pytest.fixture(scope="module")
def model_and_windows():
    model, train = tiny_model(cfg(*OLORA))
    yield model, train.x[:16]
    olora.attach(model, None)


def logits(model, x) -> np.ndarray:
    from fedhar.model.har_model import predict_logits

    return predict_logits(model, x)


def trained(state: dict, seed: int = 1) -> dict:
    """The state with every LoRA tensor random (non-zero B): as if a stage had trained it."""
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(0, 0.2, v.shape).astype(v.dtype) if k in olora.lora_names(state) else v)
            for k, v in state.items()}  # fmt: skip


def test_past_adapters_are_frozen_active_and_leave_the_trainable_keys_alone(model_and_windows):
    model, x = model_and_windows
    olora.attach(model, None)
    keys = list(get_trainable_state(model))
    assert olora.lora_names(keys)  # LoRA A and B of the current adapter are trainable
    base = logits(model, x)
    past = olora.freeze_current(trained(get_trainable_state(model)), 0)
    past.update(olora.freeze_current(trained(get_trainable_state(model), seed=2), 1))
    olora.attach(model, past)
    assert list(get_trainable_state(model)) == keys  # same names, same order: aggregation and bytes as for LoRA
    frozen = {n: p for n, p in model.named_parameters() if ".stage" in n}
    assert set(frozen) == set(past) and not any(p.requires_grad for p in frozen.values())
    assert model.backbone.base_model.active_adapters == ["default", "stage0", "stage1"]
    assert np.abs(logits(model, x) - base).max() > 1e-3  # B != 0 in a past adapter: it is in the forward pass
    olora.attach(model, {k: v for k, v in past.items() if ".stage0." in k})  # a stale stage1 is removed
    assert list(model.backbone.peft_config) == ["default", "stage0"]
    olora.attach(model, None)
    assert list(get_trainable_state(model)) == keys and np.allclose(logits(model, x), base, atol=1e-6)


def test_the_stage_boundary_leaves_the_output_unchanged(model_and_windows):
    model, x = model_and_windows
    olora.attach(model, None)
    state = trained(get_trainable_state(model))
    set_trainable_state(model, state)
    before = logits(model, x)
    past = olora.freeze_current(state, 0)
    fresh = olora.fresh_current(state, seed=0, stage=1)
    olora.attach(model, past)
    set_trainable_state(model, fresh)
    assert np.allclose(logits(model, x), before, atol=1e-5)
    names = olora.lora_names(state)
    assert all(not fresh[n].any() for n in names if ".lora_B." in n)
    a_names = [n for n in names if ".lora_A." in n]
    assert all(not np.array_equal(fresh[n], state[n]) for n in a_names)  # a new A, drawn as peft draws it
    bound = 1 / np.sqrt(fresh[a_names[0]].shape[1])  # kaiming-uniform with a = √5: U(±1/√fan_in)
    assert all(np.abs(fresh[n]).max() <= bound for n in a_names)
    again, other = olora.fresh_current(state, 0, 1), olora.fresh_current(state, 0, 2)
    assert all(np.array_equal(again[n], fresh[n]) for n in names)  # seeded: a resume draws the same
    assert not np.array_equal(other[a_names[0]], fresh[a_names[0]])
    olora.attach(model, None)


def test_the_orthogonality_penalty_is_the_sum_of_absolute_overlaps(model_and_windows):
    a = torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, 0.0]])
    p1 = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # a @ p1.T = [[1, 2], [-1, 0]]
    p2 = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])  # a @ p2.T = [[0.5, 0], [0, 0]]
    assert olora.orthogonality(a, [p1]).item() == pytest.approx(4.0)
    assert olora.orthogonality(a, [p1, p2]).item() == pytest.approx(4.5)
    rows = torch.eye(4)
    assert olora.orthogonality(rows[:2], [rows[2:]]).item() == 0.0  # orthogonal subspaces: no penalty

    model, _ = model_and_windows
    olora.attach(model, None)
    assert olora.orthogonality_penalty(model, 1.0) is None  # stage 0: nothing to be orthogonal to
    state = get_trainable_state(model)
    past = olora.freeze_current(trained(state), 0)
    olora.attach(model, past)
    expected = sum(np.abs(state[n] @ past[olora.past_name(n, 0)].T).sum()
                   for n in olora.lora_names(state) if ".lora_A." in n)  # fmt: skip
    penalty = olora.orthogonality_penalty(model, 0.5)
    value = penalty(model)
    assert value.item() == pytest.approx(0.5 * expected, rel=1e-5)
    value.backward()  # the gradient reaches the current A only
    params = dict(model.named_parameters())
    assert all(params[n].grad is not None for n in olora.lora_names(state) if ".lora_A." in n)
    assert all(params[n].grad is None for n in past)
    model.zero_grad(set_to_none=True)
    olora.attach(model, None)


def test_an_olora_federation_grows_the_downlink_only_and_its_checkpoint_scores_as_the_server_did(tmp_path):
    from fedhar.federated.data import subject_split
    from fedhar.model.state import load_checkpoint
    from fedhar.training.loop import metrics_from_logits

    summary, folder = run(tmp_path, "olora", *OLORA)
    out = results(folder)
    assert out["complete"] and np.asarray(out["matrix"]["test"]["macro_f1"]).shape == (2, 2)
    clients = json.loads(folder.file("rounds.json").read_text())["clients"]
    rows = json.loads(folder.file("rounds.json").read_text())["rounds"]
    stage = {r["round"]: r["stage"] for r in rows}
    down = {s: {c["bytes_down"] for c in clients if stage[c["round"]] == s} for s in (0, 1)}
    up = {s: {c["bytes_up"] for c in clients if stage[c["round"]] == s} for s in (0, 1)}
    assert len(down[0]) == len(down[1]) == 1 and min(down[1]) > max(down[0])  # + the frozen stage-0 adapter
    assert up[0] == up[1]  # the uplink carries the trainable tensors only, as in stage 0
    # the final checkpoint carries the past adapter: loaded, it scores the test subject as the server did
    assert (folder.file("checkpoint") / olora.PAST_FILE).is_file()
    model = load_checkpoint(folder.file("checkpoint"))
    assert model.backbone.base_model.active_adapters == ["default", "stage0"]
    c = cfg(*LEARN, *OLORA)  # the run's data
    _, val, test = subject_split(c)
    for domain in schedule.domains(c, val, test):
        m = metrics_from_logits(logits(model, domain.test.x), domain.test)
        assert m["macro_f1"] == pytest.approx(rows[-1][f"test_macro_f1@{domain.name}"], abs=1e-6)
    olora.attach(model, None)  # without the stage-1 adapter the scores change
    assert not np.allclose(logits(model, test.x), logits(load_checkpoint(folder.file("checkpoint")), test.x))


def test_a_resume_across_the_stage_boundary_continues_exactly(tmp_path, monkeypatch):
    from safetensors.numpy import load_file

    from fedhar.federated import server

    _, full = run(tmp_path, "full", *OLORA)
    real_save = server.RoundLoop.save_round
    for stop in (2, 3):  # at the boundary (no past adapter yet), and inside stage 2 (one saved)
        name = f"part-{stop}"

        def stop_here(self, rnd, stop=stop):
            real_save(self, rnd)
            if rnd == stop:
                raise KeyboardInterrupt

        monkeypatch.setattr(server.RoundLoop, "save_round", stop_here)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, name, *OLORA)
        monkeypatch.setattr(server.RoundLoop, "save_round", real_save)
        run(tmp_path, name, *OLORA, resume=True)
        part = tmp_path / name
        assert results(full)["matrix"] == json.loads((part / "continual.json").read_text())["matrix"]
        for file in ("trainable.safetensors", server.CONTINUAL_STATE_FILE):
            a = load_file(str(full.file(server.STATE_DIR) / "round-0005" / file))
            b = load_file(str(part / server.STATE_DIR / "round-0005" / file))
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), (stop, file)


@pytest.mark.parametrize("override, message", [
    ("model.finetune=full", "needs model.kind=llm and model.finetune=lora"),
    ("model.lora.freeze_a=true", "set model.lora.freeze_a=false"),
])  # fmt: skip
def test_olora_without_a_trainable_lora_is_refused_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        cfg(*OLORA, override)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="other than ffa-lora"):
        aggregation.check_strategy(cfg(*OLORA, "federated.strategy=ffa-lora"))
    assert cfg("model.finetune=full").continual.method == "naive"  # other methods do not care


def test_past_adapters_that_do_not_fit_are_refused_by_the_client(model_and_windows):
    from flwr.app import Message, RecordDict

    from fedhar.data.preprocess import Normalizer
    from fedhar.federated.client import _past_adapters, process_model
    from fedhar.federated.data import subject_split
    from fedhar.federated.records import RoundJob, state_to_record

    c = cfg(*OLORA)
    train = subject_split(c)[0]
    job = RoundJob(c, 3, 1, 0.01, 0, Normalizer.identity(train.num_channels))
    data = types.SimpleNamespace(train=train)
    good = olora.freeze_current(get_trainable_state(process_model(c, train, None)), 0)

    def message(past):
        content = {olora.PAST_ADAPTERS: state_to_record(past)} if past is not None else {}
        return Message(RecordDict(content), dst_node_id=1, message_type="train")

    assert _past_adapters(message(good), job, data).keys() == good.keys()
    name = next(iter(good))
    bad_shape = {**good, name: np.zeros((2, 2), np.float32)}
    not_finite = {**good, name: np.full_like(good[name], np.nan)}
    renamed = {k.replace(".stage0.", ".stage7."): v for k, v in good.items()}
    for past, why in ((bad_shape, "shape"), (not_finite, "NaN"), (renamed, "missing"), (None, "carries none")):
        with pytest.raises(CheckpointError, match=why) as e:
            _past_adapters(message(past), job, data)
        assert "the server's" in str(e.value)
    stage0 = RoundJob(c, 1, 0, 0.01, 0, None)
    with pytest.raises(CheckpointError, match="stage 0"):
        _past_adapters(message(good), stage0, data)
