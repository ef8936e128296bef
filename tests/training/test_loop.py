import numpy as np
import pytest
import torch

from fedhar.config import ModelConfig, TrainConfig
from fedhar.errors import ConfigError
from fedhar.model.har_model import DataSpec, build_model
from fedhar.model.state import get_trainable_state
from fedhar.training.loop import WeightAverage, evaluate, fit, lr_factor

FAST = dict(batch_size=16, lr=3e-3, patience=0, warmup_fraction=0.1, device="cpu")


def _model(ws, kind="llm"):
    return build_model(ModelConfig(kind=kind, backbone="tiny-llama", num_layers=2, tokens=8, hidden=32),
                       DataSpec.from_windows(ws), seed=0)  # fmt: skip


@pytest.mark.parametrize("kind", ["llm", "deepconvlstm"])
def test_fit_learns_a_separable_task(tiny_windows, kind):
    model = _model(tiny_windows, kind)
    before = evaluate(model, tiny_windows)["accuracy"]
    result = fit(model, tiny_windows, None, TrainConfig(epochs=8, **FAST), seed=0)
    after = evaluate(model, tiny_windows)
    assert after["accuracy"] > 0.9 > before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.windows_seen == 8 * len(tiny_windows)


def test_same_seed_same_history(tiny_windows):
    runs = []
    for _ in range(2):
        r = fit(_model(tiny_windows), tiny_windows, None, TrainConfig(epochs=2, **FAST), seed=5)
        runs.append([h["train_loss"] for h in r.history])
    assert runs[0] == runs[1]


def test_early_stopping_restores_best_epoch(tiny_windows):
    model = _model(tiny_windows)
    cfg = TrainConfig(epochs=30, **{**FAST, "patience": 2, "lr": 0.05})
    result = fit(model, tiny_windows, tiny_windows, cfg, seed=0)
    best = max(h["val_macro_f1"] for h in result.history)
    assert result.best_val_macro_f1 == best
    assert result.stopped_early and len(result.history) < cfg.epochs  # this setting does stop early
    assert len(result.history) - result.best_epoch == cfg.patience
    assert result.history[result.best_epoch - 1]["val_macro_f1"] == best
    assert result.history[-1]["val_macro_f1"] < best  # the last epoch was worse: only a restore gets best back
    assert evaluate(model, tiny_windows)["macro_f1"] == pytest.approx(best)


def test_regularizer_is_added(tiny_windows):
    model = _model(tiny_windows)
    calls = []

    def reg(m):
        calls.append(1)
        return torch.zeros(())

    fit(model, tiny_windows, None, TrainConfig(epochs=1, **FAST), regularizer=reg)
    assert len(calls) == int(np.ceil(len(tiny_windows) / 16))


def test_proximal_term_is_half_mu_times_the_squared_distance_and_holds_training_near_the_anchor(tiny_windows):
    from fedhar.federated.client import proximal_term

    model = _model(tiny_windows)
    start = get_trainable_state(model)
    numel = sum(a.size for a in start.values())
    offset = {n: a + np.float32(0.5) for n, a in start.items()}
    assert float(proximal_term(model, offset, 0.2)(model).detach()) == pytest.approx(0.5 * 0.2 * 0.25 * numel, rel=1e-5)

    def drift(mu):
        m = _model(tiny_windows)  # the same seeded init as ``start``
        fit(m, tiny_windows, None, TrainConfig(epochs=2, **FAST), seed=0,
            regularizer=proximal_term(m, start, mu) if mu else None)  # fmt: skip
        return sum(float(((a.astype(np.float64) - start[n]) ** 2).sum()) for n, a in get_trainable_state(m).items())

    free, held = drift(0.0), drift(50.0)
    assert free > 0 and held < 0.1 * free  # about 0.005 x: mu=50 keeps the weights at the anchor


def test_schedule_shape():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(99, 100, 10, "constant") == 1.0


def test_empty_training_set_is_an_error(tiny_windows):
    with pytest.raises(ConfigError, match="no training windows"):
        fit(_model(tiny_windows), tiny_windows.subset(np.zeros(len(tiny_windows), bool)), None, TrainConfig())


def test_evaluate_by_subject_splits_the_pooled_score(tiny_windows):
    model = _model(tiny_windows)
    fit(model, tiny_windows, None, TrainConfig(epochs=2, **FAST), seed=0)
    pooled = evaluate(model, tiny_windows, by="subject")
    groups = pooled.pop("by_subject")
    assert list(groups) == ["1", "2", "3", "4"]
    assert sum(g["num_windows"] for g in groups.values()) == pooled["num_windows"]
    correct = sum(g["accuracy"] * g["num_windows"] for g in groups.values())
    assert correct / pooled["num_windows"] == pytest.approx(pooled["accuracy"])
    assert groups["2"] == evaluate(model, tiny_windows.where(subject="2"))
    assert pooled == evaluate(model, tiny_windows)
    with pytest.raises(ConfigError, match="cannot group by `user`"):
        evaluate(model, tiny_windows, by="user")


def test_weight_average_tracks_and_swaps():
    p = torch.nn.Parameter(torch.zeros(3))
    avg = WeightAverage([p], decay=0.5)
    for step, value in enumerate([1.0, 2.0, 3.0]):
        with torch.no_grad():
            p.fill_(value)
        avg.update(step)
    # decay ramps: min(0.5, 1/10), min(0.5, 2/11), min(0.5, 3/12)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 3.0]):
        d = min(0.5, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * value
    assert torch.allclose(avg.shadow[0], torch.full((3,), expected))
    with avg.swapped_in():
        assert torch.allclose(p, torch.full((3,), expected))
    assert torch.equal(p.detach(), torch.full((3,), 3.0))  # training weights back


def test_fit_with_weight_average_keeps_the_average(tiny_windows):
    cfg = TrainConfig(epochs=2, ema_decay=0.9, **FAST)
    model = _model(tiny_windows)
    fit(model, tiny_windows, None, cfg, seed=0)
    plain = _model(tiny_windows)
    fit(plain, tiny_windows, None, TrainConfig(epochs=2, **FAST), seed=0)
    a, b = get_trainable_state(model), get_trainable_state(plain)
    assert any(not np.allclose(a[k], b[k]) for k in a)  # same training path, averaged weights kept
    again = _model(tiny_windows)
    fit(again, tiny_windows, None, cfg, seed=0)
    assert all(np.array_equal(a[k], v) for k, v in get_trainable_state(again).items())
    with_val = _model(tiny_windows)
    result = fit(with_val, tiny_windows, tiny_windows, cfg, seed=0)
    assert evaluate(with_val, tiny_windows)["macro_f1"] == pytest.approx(result.best_val_macro_f1)


def test_a_diverging_run_stops_with_the_fix(tiny_windows):
    model = build_model(ModelConfig(kind="deepconvlstm", hidden=16), DataSpec.from_windows(tiny_windows))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e30, grad_clip=0, device="cpu")
    with pytest.raises(ConfigError, match="training diverged at epoch 1.*lower train.lr"):
        fit(model, tiny_windows, None, cfg)


def test_mixup_feeds_convex_blends_of_the_batch(tiny_windows):
    """With train.augment.mixup_alpha each training batch is a blend of two windows per row, share ~ Beta(a, a):
    every value the model sees lies between the batch's own windows' values, most rows are true blends, and the
    same seed gives the same training; alpha 0 feeds the windows as they are."""
    import dataclasses

    from fedhar.config import AugmentConfig

    x = np.repeat(np.arange(len(tiny_windows), dtype=np.float32)[:, None, None], 6, axis=1)
    x = np.repeat(x, tiny_windows.window_len, axis=2)  # window i holds the value i everywhere
    ws = dataclasses.replace(tiny_windows, x=x)

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(1, 3)
            self.seen: list[torch.Tensor] = []

        def forward(self, xb):
            self.seen.append(xb[:, 0, 0].detach().clone())
            return self.head(xb[:, :1, 0])

    def run(alpha, seed=0):
        model = Recorder()
        cfg = TrainConfig(epochs=1, augment=AugmentConfig(mixup_alpha=alpha), **FAST)
        history = fit(model, ws, None, cfg, seed=seed).history
        return torch.cat(model.seen), history

    plain, _ = run(0.0)
    assert set(plain.tolist()) == set(range(len(ws)))  # whole windows, each once
    mixed, history = run(0.4)
    blended = (mixed != mixed.round()).float().mean().item()
    assert blended > 0.5 and mixed.min() >= 0 and mixed.max() <= len(ws) - 1
    again, history_again = run(0.4)
    assert torch.equal(mixed, again)
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in history_again]
    with pytest.raises(ConfigError, match="mixup_alpha"):
        AugmentConfig(mixup_alpha=-1).validate("train.augment")
