"""How data settings reach the loaders: data.sample_rate, data.loader_options, label renaming order, cache key."""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import pytest
from tests.fixtures import layouts as L

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


# ---- data.placement: one placement or a list of them ---------------------------------------------


@pytest.fixture(scope="module")
def multi_placement(tmp_path_factory):
    """The RealWorld fixture with four positions (forearm is the LG watch) and the PAMAP2 fixture (three IMUs)."""
    root = tmp_path_factory.mktemp("placements")
    return {"realworld": L.write_realworld(root / "rw", positions=("chest", "forearm", "upperarm", "waist")),
            "pamap2": L.write_pamap2(root / "pamap2")}  # fmt: skip


def _placement_cfg(path, dataset: str, placement: str) -> DataConfig:
    from fedhar.config import load_config

    return load_config(None, [f"data.dataset={dataset}", f"data.path={path}", "data.window=64",
                              f"data.placement={placement}"]).data  # fmt: skip


@pytest.mark.parametrize("dataset, listed, one_by_one, tags", [
    ("realworld", "[waist, forearm]", ["waist", "forearm"], ["waist", "forearm"]),
    ("pamap2", "[hand, chest, ankle]", ["hand", "chest", "ankle"], ["wrist", "chest", "ankle"]),
    ("pamap2", "[wrist, chest, ankle]", ["hand", "chest", "ankle"], ["wrist", "chest", "ankle"]),  # hand's alias
])  # fmt: skip
def test_a_placement_list_reads_every_placement_with_its_loaders_tag(multi_placement, dataset, listed, one_by_one,
                                                                     tags):  # fmt: skip
    """The windows of each listed placement, as a config naming it alone yields them, in the list's order."""
    path = multi_placement[dataset]
    cfg = _placement_cfg(path, dataset, listed)
    assert isinstance(cfg.placement, list) and len(cfg.placement) == len(tags)
    ws = load_windows(cfg, use_cache=False)
    parts = [load_windows(_placement_cfg(path, dataset, p), use_cache=False) for p in one_by_one]
    assert [len(p) for p in parts] == [int((ws.placement == t).sum()) for t in tags] and all(map(len, parts))
    assert list(dict.fromkeys(ws.placement.tolist())) == tags  # each recording keeps the tag its loader gave
    np.testing.assert_array_equal(ws.x, np.concatenate([p.x for p in parts]))
    np.testing.assert_array_equal(ws.y, np.concatenate([p.y for p in parts]))
    assert ws.label_names == parts[0].label_names and set(ws.dataset.tolist()) == {dataset}
    assert ws.layout == parts[0].layout
    rs = read_recordings(cfg)
    assert rs.dataset == dataset and rs.summary()["placements"] == sorted(tags)
    if dataset == "realworld":  # the watch on the forearm, the phone on the waist
        assert set(ws.where(placement="forearm").device.tolist()) == {"lg-g-watch-r"}
        assert set(ws.where(placement="waist").device.tolist()) == {"samsung-galaxy-s4"}


def test_a_placement_list_has_its_own_window_cache_entry(multi_placement, tmp_path):
    path = multi_placement["realworld"]
    one = dataclasses.replace(_placement_cfg(path, "realworld", "waist"), cache_dir=str(tmp_path / "cache"))
    both = dataclasses.replace(one, placement=["waist", "forearm"])
    assert len({_fingerprint(one, 0), _fingerprint(both, 0), _fingerprint(dataclasses.replace(one, placement=None), 0),
                _fingerprint(dataclasses.replace(one, placement=["forearm", "waist"]), 0)}) == 4  # fmt: skip
    waist = load_windows(one)
    listed = load_windows(both)
    assert not listed.notes["cache_hit"] and set(listed.placement.tolist()) == {"waist", "forearm"}
    again = load_windows(both)
    assert again.notes["cache_hit"] and len(again) == len(listed) > len(waist)


@pytest.mark.parametrize("value, message", [
    ("[]", r"^data.placement is an empty list: name at least one placement \(e.g. `data.placement: waist`, or a "
           r"list `data.placement: \[waist, forearm\]`\), or set it to null for the loader's default$"),
    ("[waist, forearm, waist]", r"^data.placement lists `waist` more than once in \['waist', 'forearm', 'waist'\]; "
                                r"list each placement once$"),
    ("[Waist, waist]", r"lists `waist` more than once"),  # the loaders read names case-blind
    ("['', waist]", r"^data.placement\[0\] must be a placement name, got '' in \['', 'waist'\]; e.g. "),
    ("{waist: 1}", r"^data.placement must be a string or a list of strings, got \{'waist': 1\}$"),
    ("[[waist]]", r"^data.placement\[0\] must be a string, got \['waist'\]$"),
])  # fmt: skip
def test_a_bad_placement_list_names_the_key_the_value_and_the_fix(value, message):
    from fedhar.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"data.placement={value}"])


def test_placement_values_the_config_accepts():
    from fedhar.config import load_config

    assert load_config(None, ["data.placement=waist"]).data.placement == "waist"
    assert load_config(None, ["data.placement=[waist, forearm]"]).data.placement == ["waist", "forearm"]
    assert load_config(None, ["data.placement=[chest]"]).data.placement == ["chest"]
    assert load_config(None, ["data.placement=null"]).data.placement is None
    with pytest.raises(ConfigError, match="data.placement is an empty list"):  # built in code, then validated
        DataConfig(placement=[]).validate("data")
    with pytest.raises(ConfigError, match=r"data.placement\[1\] must be a placement name, got 3"):
        DataConfig(placement=["waist", 3]).validate("data")


def _error(cfg: DataConfig) -> str:
    with pytest.raises((ConfigError, DataError)) as e:
        read_recordings(cfg)
    return f"{type(e.value).__name__}: {e.value}"


def test_a_listed_placement_the_loader_lacks_keeps_the_loaders_own_error(multi_placement, tmp_path):
    """The same one line a config naming that placement alone gets (it lists the loader's choices)."""
    for dataset, listed, bad in (("realworld", "[waist, pocket]", "pocket"), ("pamap2", "[hand, thigh]", "thigh")):
        path = multi_placement[dataset]
        message = _error(_placement_cfg(path, dataset, bad))
        assert f"has no placement `{bad}`; set `data.placement` to one of [" in message
        assert _error(_placement_cfg(path, dataset, listed)) == message
    hapt = L.write_hapt(tmp_path / "hapt")  # one placement (waist): any other, listed or not, errs as today
    message = _error(DataConfig(dataset="hapt", path=str(hapt), placement="forearm"))
    assert message == "DataError: HAPT has no placement `forearm`; set `data.placement` to one of ['waist']"
    assert _error(DataConfig(dataset="hapt", path=str(hapt), placement=["waist", "forearm"])) == message
    assert read_recordings(DataConfig(dataset="hapt", path=str(hapt), placement=["waist"])).summary()["placements"] == [
        "waist"]  # fmt: skip


def test_a_placement_listed_twice_under_two_names_is_refused(multi_placement, tmp_path):
    """hand and wrist are one PAMAP2 IMU: its windows would be in the set twice."""
    message = _error(_placement_cfg(multi_placement["pamap2"], "pamap2", "[hand, chest, wrist]"))
    assert message == ("DataError: data.placement lists `hand` and `wrist`, which both read pamap2's `wrist` "
                       "recordings; list each placement once")  # fmt: skip
    generic = L.write_generic_csv(tmp_path / "csv")  # the generic loader only tags its one folder
    message = _error(DataConfig(dataset="generic", path=str(generic), placement=["wrist", "waist"]))
    assert message.startswith("ConfigError: data.placement ['wrist', 'waist']: the generic loader reads one folder")
    rs = read_recordings(DataConfig(dataset="generic", path=str(generic), placement=["wrist"]))
    assert rs.summary()["placements"] == ["wrist"]


def test_join_placements_merges_differing_label_tables():
    from fedhar.data.pipeline import join_placements
    from fedhar.data.recording import Recording, RecordingSet

    def part(placement, names, labels):
        rec = Recording(np.zeros((len(labels), 6)), np.asarray(labels), 50.0, "1", "s", "generic", placement=placement)
        return placement, RecordingSet([rec], names, "generic", skipped=[f"{placement} skip"])

    rs = join_placements([part("wrist", ["sit", "walk"], [0, 1, -1]), part("waist", ["walk", "run"], [1, 0, -1])])
    assert rs.label_names == ["sit", "walk", "run"] and rs.skipped == ["wrist skip", "waist skip"]
    assert [r.labels.tolist() for r in rs.recordings] == [[0, 1, -1], [2, 1, -1]]
    assert [r.placement for r in rs.recordings] == ["wrist", "waist"]


def test_a_checkpoint_keeps_a_placement_list(tiny_windows, tmp_path):
    """The windowing stored with a model (which `fedhar evaluate` reuses) may hold the list."""
    from fedhar.config import ModelConfig
    from fedhar.model.har_model import DataSpec, build_model, windowing_record
    from fedhar.model.state import load_checkpoint, save_checkpoint

    cut = windowing_record(DataConfig(dataset="pamap2", placement=["hand", "chest"]))
    assert cut["placement"] == ["hand", "chest"]
    model = build_model(ModelConfig(kind="deepconvlstm", hidden=16), DataSpec.from_windows(tiny_windows, windowing=cut))
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "ckpt"))
    assert loaded.data.windowing["placement"] == ["hand", "chest"]
