"""Federated partitions: every scheme's invariants, skew controls, naming, errors and summary files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fedhar.config import DataConfig, SplitConfig
from fedhar.data.partition import MIN_CLIENT_WINDOWS, client_names, label_entropy, partition, partition_summary
from fedhar.data.pipeline import load_windows
from fedhar.data.windows import WindowSet
from fedhar.errors import ConfigError, DataError
from tests.conftest import BASIC6, HAPT, requires_hapt


@pytest.fixture(scope="module")
def federation() -> WindowSet:
    """4 subjects × 2 devices × 2 placements of short synthetic recordings (672 windows)."""
    spec = {"subjects": 4, "devices": ["phone-a", "phone-b"], "placements": ["waist", "wrist"],
            "seconds_per_activity": 12}  # fmt: skip
    return load_windows(DataConfig(synthetic=spec), seed=0, use_cache=False)


def _assert_disjoint_and_covering(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))
    assert all(np.array_equal(p, np.sort(p)) for p in parts)


def _mean_entropy(ws: WindowSet, parts: list[np.ndarray]) -> float:
    return float(np.mean([label_entropy(np.bincount(ws.y[p], minlength=ws.num_classes)) for p in parts]))


@pytest.mark.parametrize("scheme, values", [
    ("subject", ["1", "2", "3", "4"]), ("device", ["phone-a", "phone-b"]), ("placement", ["waist", "wrist"]),
])  # fmt: skip
def test_natural_schemes_give_one_client_per_value(federation, scheme, values):
    parts = partition(federation, scheme)
    _assert_disjoint_and_covering(parts, len(federation))
    tags = getattr(federation, scheme)
    assert [sorted(set(tags[p])) for p in parts] == [[v] for v in values]
    assert client_names(federation, scheme, parts) == [f"{scheme}-{v}" for v in values]
    assert partition(federation, scheme, num_clients=len(values))[0].tolist() == parts[0].tolist()


def test_iid_is_an_even_random_split(federation):
    parts = partition(federation, "iid", num_clients=7, seed=1)
    _assert_disjoint_and_covering(parts, len(federation))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _mean_entropy(federation, parts) > 0.9
    assert client_names(federation, "iid", parts) == [f"client-{i:02d}" for i in range(7)]
    assert [p.tolist() for p in parts] == [p.tolist() for p in partition(federation, "iid", num_clients=7, seed=1)]
    assert parts[0].tolist() != partition(federation, "iid", num_clients=7, seed=2)[0].tolist()


def test_dirichlet_is_disjoint_covering_and_seeded(federation):
    parts = partition(federation, "dirichlet", num_clients=10, alpha=0.3, seed=3)
    _assert_disjoint_and_covering(parts, len(federation))
    again = partition(federation, "dirichlet", num_clients=10, alpha=0.3, seed=3)
    assert [p.tolist() for p in parts] == [p.tolist() for p in again]
    assert [p.tolist() for p in parts] != [p.tolist() for p in partition(federation, "dirichlet", 10, 0.3, seed=4)]


def test_dirichlet_skew_grows_as_alpha_shrinks(federation):
    def entropy(alpha: float) -> float:
        return np.mean([_mean_entropy(federation, partition(federation, "dirichlet", 10, alpha, seed=s))
                        for s in range(3)])  # fmt: skip

    high, mid, low = entropy(100.0), entropy(1.0), entropy(0.1)
    assert high > 0.95  # almost every client sees every class evenly
    assert high > mid + 0.05 > low + 0.1


def test_every_client_gets_the_minimum_even_with_extreme_skew(federation):
    parts = partition(federation, "dirichlet", num_clients=40, alpha=0.01, quantity_skew=2.0, seed=0)
    _assert_disjoint_and_covering(parts, len(federation))
    assert min(len(p) for p in parts) >= min(MIN_CLIENT_WINDOWS, len(federation) // 40)
    tiny = federation.subset(np.arange(30))
    parts = partition(tiny, "iid", num_clients=30, quantity_skew=3.0)
    assert sorted(len(p) for p in parts) == [1] * 30  # capped at N // num_clients


def test_quantity_skew_spreads_client_sizes(federation):
    def spread(scheme: str, sigma: float | None) -> float:
        ratios = []
        for seed in range(3):
            sizes = np.array([len(p) for p in partition(federation, scheme, 12, 100.0, sigma, seed)])
            ratios.append(sizes.std() / sizes.mean())
        return float(np.mean(ratios))

    assert spread("iid", None) < 0.01
    assert spread("iid", 0.5) < spread("iid", 1.5)
    assert spread("iid", 1.5) > 0.5
    assert spread("dirichlet", 1.5) > spread("dirichlet", None) + 0.3
    parts = partition(federation, "iid", 12, quantity_skew=1.5, seed=0)
    _assert_disjoint_and_covering(parts, len(federation))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"scheme": "random"}, ConfigError, "unknown partition scheme `random`"),
    ({"scheme": "dirichlet"}, ConfigError, "needs federated.num_clients"),
    ({"scheme": "iid", "num_clients": 0}, ConfigError, "must be >= 1"),
    ({"scheme": "iid", "num_clients": 100_000}, ConfigError, "only"),
    ({"scheme": "dirichlet", "num_clients": 5, "alpha": 0.0}, ConfigError, "alpha must be positive"),
    ({"scheme": "subject", "num_clients": 3}, ConfigError, "one client per subject (4 here)"),
    ({"scheme": "device", "quantity_skew": 1.0}, ConfigError, "keep their natural sizes"),
    ({"scheme": "iid", "num_clients": 3, "quantity_skew": -1.0}, ConfigError, "quantity_skew must be >= 0"),
])  # fmt: skip
def test_bad_inputs_fail_clearly(federation, kwargs, error, message):
    with pytest.raises(error) as err:
        partition(federation, **kwargs)
    assert message in str(err.value)


def test_empty_window_set_fails(federation):
    with pytest.raises(DataError, match="empty"):
        partition(federation.subset(np.zeros(len(federation), dtype=bool)), "subject")


def test_long_client_names_keep_their_order(federation):
    parts = partition(federation, "iid", num_clients=120)
    names = client_names(federation, "iid", parts)
    assert names[0] == "client-000" and names[-1] == "client-119" and names == sorted(names)


def test_summary_writes_readable_csv_json_and_png(federation, tmp_path):
    parts = partition(federation, "dirichlet", num_clients=6, alpha=0.5, seed=0)
    names = client_names(federation, "dirichlet", parts)
    table = partition_summary(federation, parts, names, tmp_path / "out", "Dirichlet α=0.5, 6 clients")
    files = {ext: tmp_path / "out" / f"dirichlet-0-5-6-clients.{ext}" for ext in ("csv", "json", "png")}
    assert table["files"] == {ext: str(p) for ext, p in files.items()}
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files["png"].stat().st_size > 10_000
    assert json.loads(files["json"].read_text()) == table
    rows = list(csv.reader(files["csv"].open()))
    assert rows[0] == ["client", *BASIC6, "total", "label_entropy"]
    counts = np.array([[int(v) for v in row[1:7]] for row in rows[1:]])
    assert [row[0] for row in rows[1:]] == names
    np.testing.assert_array_equal(counts, [np.bincount(federation.y[p], minlength=6) for p in parts])
    assert counts.sum() == table["total_windows"] == len(federation)
    assert table["synthetic"] is True and table["num_clients"] == 6
    assert table["windows_per_client"]["min"] == min(len(p) for p in parts)
    assert 0 < table["mean_label_entropy"] < 1
    with pytest.raises(DataError, match="client names"):
        partition_summary(federation, parts, names[:-1], tmp_path, "bad")


@requires_hapt
def test_hapt_training_subjects_become_one_client_each():
    cfg = DataConfig(dataset="hapt", path=str(HAPT), classes=BASIC6)
    train_subjects = ["1", "3", "5", "6", "7", "8", "11", "14", "15", "16", "17", "19", "21", "22", "23"]
    from fedhar.data.splits import split_by_subject

    train, _, _ = split_by_subject(load_windows(cfg), SplitConfig(train=train_subjects), 0)
    parts = partition(train, "subject")
    assert client_names(train, "subject", parts) == [f"subject-{s}" for s in train_subjects]
    _assert_disjoint_and_covering(parts, len(train))
