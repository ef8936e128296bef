"""The low-label protocols in a federation: each simulated client keeps k windows per class, or p % of each class,
of its *own* windows; a centralized run with ``data.labelled_per_subject`` keeps exactly those windows."""

from __future__ import annotations

import numpy as np
import pytest

from fedhar.config import load_config
from fedhar.data.pipeline import split_windows
from fedhar.data.splits import low_label_per_subject
from fedhar.errors import ConfigError
from fedhar.federated.data import PARTITION_ID, client_data, simulated_partition, stage_windows

FED = ["data.dataset=synthetic", "data.synthetic={subjects: 5, seconds_per_activity: 10}", "data.window=32",
       "data.split.val=[4]", "data.split.test=[5]", "model.backbone=tiny-llama", "model.tokens=8"]  # fmt: skip


def _clients(*overrides: str):
    cfg = load_config(None, [*FED, *overrides])
    parts, names = simulated_partition(cfg)
    return cfg, names, [client_data(cfg, {PARTITION_ID: i}, 0) for i in range(len(parts))]


@pytest.mark.parametrize("k", [1, 3])
def test_each_client_keeps_k_windows_per_class_of_its_own(k):
    cfg, names, clients = _clients(f"data.labelled_per_class={k}")
    full = stage_windows(cfg)
    assert names == ["subject-1", "subject-2", "subject-3"]
    for name, c in zip(names, clients):
        own = full.where(subject=[name.split("-", 1)[1]])
        assert set(c.train.subject.tolist()) == {name.split("-", 1)[1]}
        expected = np.minimum(own.class_counts(), k)
        assert list(c.train.class_counts()) == list(expected), name
    assert sum(len(c.train) for c in clients) == 3 * 6 * k  # every class on every client: 18 k, not 6 k


def test_each_client_keeps_p_percent_of_each_class():
    cfg, names, clients = _clients("data.labelled_percent=25")
    full = stage_windows(cfg)
    for name, c in zip(names, clients):
        own = full.where(subject=[name.split("-", 1)[1]]).class_counts()
        assert list(c.train.class_counts()) == [max(1, round(n * 0.25)) if n else 0 for n in own], name


def test_the_labelled_windows_are_seeded_per_client_and_run():
    _, _, a = _clients("data.labelled_per_class=2")
    _, _, b = _clients("data.labelled_per_class=2")
    _, _, c = _clients("data.labelled_per_class=2", "seed=1")
    assert all(np.array_equal(x.train.x, y.train.x) for x, y in zip(a, b))
    assert not all(np.array_equal(x.train.x, y.train.x) for x, y in zip(a, c))


def test_a_centralized_run_per_subject_holds_the_federations_labelled_windows():
    cfg, _, clients = _clients("data.labelled_per_class=2")
    train, _, _ = split_windows(cfg.data, cfg.seed)
    pooled = low_label_per_subject(train, cfg.seed, per_class=2)
    fed = np.concatenate([c.train.x for c in clients])
    assert len(pooled) == len(fed) == 36
    assert {w.tobytes() for w in pooled.x} == {w.tobytes() for w in fed}
    with pytest.raises(ConfigError, match="labelled_per_subject applies a labelled budget per subject"):
        load_config(None, ["data.labelled_per_subject=true"])
