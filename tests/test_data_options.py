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
