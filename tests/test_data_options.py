"""How data settings reach the loaders: data.sample_rate, data.loader_options, label renaming order, cache key."""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import pytest
from fixtures import layouts as L

import fedhar.data.loaders.hhar as hhar
from fedhar.config import DataConfig
from fedhar.data.loaders import load_recordings
from fedhar.data.pipeline import _fingerprint, load_windows, read_recordings
from fedhar.errors import ConfigError, DataError


def _untimed_csv(folder, rows: int = 200):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"]
    lines += [f"0,0,{9.8 if i % 2 else 9.81},0,0,0,a" for i in range(rows)]  # acc in m/s², no unit stated
    (folder / "s1.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_generic_csv_without_time_column_needs_its_recording_rate(tmp_path):
    """data.sample_rate is the rate windows are cut at; the rate the files were recorded at is never assumed."""
    folder = _untimed_csv(tmp_path / "csv")
    cfg = DataConfig(dataset="generic", path=str(folder), sample_rate=25.0, loader_options={"units": "acc=m/s^2"})
    with pytest.raises(DataError, match=r"no time column.*data.loader_options.sample_rate"):
        read_recordings(cfg)
    # recorded at 50 Hz, resampled to 25 Hz
    native = read_recordings(dataclasses.replace(cfg, loader_options={"units": "acc=m/s^2", "sample_rate": 50.0}))
    assert native.recordings[0].sample_rate == 25.0 and len(native.recordings[0].signal) == 100


def test_loader_options_reach_the_loader(tmp_path):
    folder = _untimed_csv(tmp_path / "csv")
    with pytest.raises(DataError, match="acc columns have no unit"):  # m/s² values, no unit stated
        read_recordings(DataConfig(dataset="generic", path=str(folder), loader_options={"sample_rate": 50}))
    rs = read_recordings(DataConfig(dataset="generic", path=str(folder),
                                    loader_options={"units": "acc=m/s^2", "sample_rate": 50}))  # fmt: skip
    np.testing.assert_allclose(rs.recordings[0].signal[1, 2], 9.8 / L.G, atol=1e-6)
    pamap2 = L.write_pamap2(tmp_path / "pamap2")
    both = read_recordings(DataConfig(dataset="pamap2", path=str(pamap2), loader_options={"optional": True}))
    assert {r.session for r in both.recordings} == {"protocol", "optional"}


def test_grid_loaders_grid_at_data_sample_rate(tmp_path, monkeypatch):
    calls, original = [], hhar.load

    @functools.wraps(original)  # keeps the signature the option check reads
    def spy(root, **options):
        calls.append(options)
        return original(root, **options)

    monkeypatch.setattr(hhar, "load", spy)
    root = L.write_hhar(tmp_path / "hhar")
    rs = read_recordings(DataConfig(dataset="hhar", path=str(root), sample_rate=25.0))
    assert calls == [{"sample_rate": 25.0}] and {r.sample_rate for r in rs.recordings} == {25.0}
    read_recordings(DataConfig(dataset="hhar", path=str(root), sample_rate=None))
    assert calls[-1] == {}  # null: the loader's own grid


def test_unknown_loader_option_names_the_accepted_ones(tmp_path):
    root = L.write_wisdm(tmp_path / "wisdm")
    accepted = r"\['placement', 'sample_rate', 'max_gap_s'\]"
    with pytest.raises(ConfigError, match=rf"wisdm loader has no option `units`; it accepts {accepted}; fix `data."):
        read_recordings(DataConfig(dataset="wisdm", path=str(root), loader_options={"units": "acc=g"}))
    with pytest.raises(ConfigError, match="sample_rate must be a positive number"):
        load_recordings(root, "wisdm", sample_rate=0)
    with pytest.raises(ConfigError, match=r"data.loader_options.placement: set data.placement instead"):
        DataConfig(loader_options={"placement": "wrist"}).validate("data")


def test_cache_key_covers_loader_options(tmp_path):
    root = L.write_pamap2(tmp_path / "pamap2")
    cfg = DataConfig(dataset="pamap2", path=str(root), window=64)
    with_optional = dataclasses.replace(cfg, loader_options={"optional": True})
    assert _fingerprint(cfg, 0) != _fingerprint(with_optional, 0)
    protocol = load_windows(cfg)
    both = load_windows(with_optional)
    assert not both.notes["cache_hit"] and len(both) > len(protocol)


# ---- label renaming: common_labels first, then label_map ----------------------------------------


def _tagged_npz(tiny_windows, path, dataset: str = "hapt"):
    ws = dataclasses.replace(
        tiny_windows, label_names=["WALKING", "SITTING", "LAYING"], dataset=np.full(len(tiny_windows), dataset)
    )
    ws.save(path)
    return path


def test_common_labels_on_an_npz_use_the_windows_dataset_tag(tiny_windows, tmp_path):
    path = _tagged_npz(tiny_windows, tmp_path / "hapt-windows.npz")
    assert load_recordings(path).dataset == "hapt"
    ws = load_windows(DataConfig(dataset="generic", path=str(path), window=32, common_labels=True))
    assert ws.label_names == ["walking", "sitting", "lying"] and len(ws) == len(tiny_windows)


def test_label_map_renames_the_common_names(tiny_windows, tmp_path):
    path = _tagged_npz(tiny_windows, tmp_path / "w.npz")
    cfg = DataConfig(dataset="generic", path=str(path), window=32, common_labels=True,
                     label_map={"sitting": "still", "lying": "still"}, classes=["walking", "still"])  # fmt: skip
    ws = load_windows(cfg)
    assert ws.label_names == ["walking", "still"]
    np.testing.assert_array_equal(ws.y, np.where(tiny_windows.y == 0, 0, 1))


# ---- cache staleness ----------------------------------------------------------------------------


def test_csvs_and_cache_key_follow_symlinked_folders(tmp_path):
    elsewhere = L.write_generic_csv(tmp_path / "shared" / "bob")
    (elsewhere / "alice.csv").rename(tmp_path / "shared" / "alice.csv")
    root = tmp_path / "data"
    root.mkdir()
    (root / "bob").symlink_to(elsewhere, target_is_directory=True)
    (root / "alice.csv").symlink_to(tmp_path / "shared" / "alice.csv")
    (root / "loop").symlink_to(root, target_is_directory=True)  # a link cycle is walked once
    rs = load_recordings(root, "generic")
    assert rs.subjects() == ["alice", "bob"]
    cfg = DataConfig(dataset="generic", path=str(root))
    second = 1_700_000_000 * 10**9
    for target in (tmp_path / "shared" / "alice.csv", elsewhere / "bob.csv"):  # linked file; file in a linked folder
        os.utime(target, ns=(second, second))
        key = _fingerprint(cfg, 0)
        os.utime(target, ns=(second, second + 1000))  # rewritten within the same second, same size
        assert _fingerprint(cfg, 0) != key, target


# ---- cache key: every setting the windows depend on ---------------------------------------------

#: each cached DataConfig field → a value that changes the windows (the base below has the other one)
_WINDOW_SETTINGS = {
    "dataset": "hapt",
    "sample_rate": 25.0,
    "window": 32,
    "overlap": 0.25,
    "label_rule": "majority",
    "classes": ["sit"],
    "label_map": {"walk": "move"},
    "common_labels": True,
    "sensors": ["acc"],
    "placement": "wrist",
    "loader_options": {"units": "acc=g"},
    "synthetic": {"subjects": 3},
}


def _keyed_folder(tmp_path):
    return L.write_generic_csv(tmp_path / "csv")


def test_every_data_setting_is_cached_or_deliberately_not():
    """A new DataConfig field must be put in the window cache key (and in _WINDOW_SETTINGS here), or be listed
    in NOT_CACHED as applied after the cached windows; never silently left out of both."""
    from fedhar.data.pipeline import NOT_CACHED

    fields = {f.name for f in dataclasses.fields(DataConfig)}
    assert fields - set(NOT_CACHED) == set(_WINDOW_SETTINGS) | {"path"}


@pytest.mark.parametrize("name", sorted(_WINDOW_SETTINGS))
def test_cache_key_changes_with_every_window_setting(tmp_path, name):
    """Windows cut with another setting are never answered from the cache of the first (a stale cache would
    silently train on the old windows)."""
    dataset = "synthetic" if name == "synthetic" else "generic"
    base = DataConfig(dataset=dataset, path=str(_keyed_folder(tmp_path)), window=64)
    assert getattr(base, name) != _WINDOW_SETTINGS[name]
    changed = dataclasses.replace(base, **{name: _WINDOW_SETTINGS[name]})
    assert _fingerprint(base, 0) == _fingerprint(dataclasses.replace(base), 0)  # deterministic
    assert _fingerprint(changed, 0) != _fingerprint(base, 0), name


def test_cache_key_changes_with_path_seed_and_leniency(tmp_path):
    a = DataConfig(dataset="generic", path=str(_keyed_folder(tmp_path / "a")), window=64)
    b = dataclasses.replace(a, path=str(_keyed_folder(tmp_path / "b")))  # the same files elsewhere
    assert _fingerprint(a, 0) != _fingerprint(b, 0)
    assert _fingerprint(a, 0) != _fingerprint(a, 0, lenient=True)
    assert _fingerprint(a, 0) == _fingerprint(a, 1)  # recordings from files do not depend on the seed
    synthetic = DataConfig()
    assert _fingerprint(synthetic, 0) != _fingerprint(synthetic, 1)  # generated recordings do


def test_settings_applied_after_the_cache_share_its_key(tmp_path):
    """Splits, normalisation, label budgets and train_overlap act on the cached windows: changing them reuses
    the cache instead of re-reading every file."""
    base = DataConfig(dataset="generic", path=str(_keyed_folder(tmp_path)), window=64)
    for changes in ({"split": dataclasses.replace(base.split, test=["x"])}, {"normalize": False},
                    {"labelled_per_class": 3}, {"labelled_percent": 10.0}, {"train_overlap": 0.75},
                    {"cache_dir": str(tmp_path / "elsewhere")}):  # fmt: skip
        assert _fingerprint(dataclasses.replace(base, **changes), 0) == _fingerprint(base, 0), changes


def _constant_csv(path, acc_x: str, rows: int = 200):
    """acc_x is the same text on every row (so two values of one length give files of one size)."""
    lines = ["timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"]
    lines += [f"{i / 50:.2f},{acc_x},0.000,1.000,0,0,0,{'sit' if i < rows // 2 else 'walk'}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def test_a_rewritten_file_of_the_same_size_is_read_again(tmp_path):
    """The hard case of a stale cache: a CSV rewritten with other values but the same byte length, within the
    same second. Its mtime in nanoseconds differs, so the windows are cut again from the new values."""
    folder = tmp_path / "data" / "s1"
    folder.mkdir(parents=True)
    csv_path = folder / "rec.csv"
    cfg = DataConfig(dataset="generic", path=str(tmp_path / "data"), window=32, cache_dir=str(tmp_path / "cache"))
    second = 1_700_000_000 * 10**9
    _constant_csv(csv_path, "0.125")
    os.utime(csv_path, ns=(second, second))
    first = load_windows(cfg)
    assert not first.notes["cache_hit"] and len(first) > 0
    np.testing.assert_allclose(first.x[:, 0], 0.125, atol=1e-6)
    assert load_windows(cfg).notes["cache_hit"]  # unchanged files: the cache answers
    size = csv_path.stat().st_size
    _constant_csv(csv_path, "0.375")
    assert csv_path.stat().st_size == size
    os.utime(csv_path, ns=(second, second + 1000))  # 1 µs later: the same second, the same size
    again = load_windows(cfg)
    assert not again.notes["cache_hit"]
    np.testing.assert_allclose(again.x[:, 0], 0.375, atol=1e-6)
    assert len(again) == len(first) and again.notes["cache"] != first.notes["cache"]
    assert load_windows(cfg).notes["cache_hit"]
