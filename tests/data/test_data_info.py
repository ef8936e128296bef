"""`fedhar data info` logic on every fixture layout and on an .npz window set."""

from __future__ import annotations

import json

import pytest
from tests.fixtures import layouts as L
from tests.fixtures.layouts import EXPECTED_TAGS, SUBJECT_INDEX, WRITERS

from fedhar.data.info import data_summary, info_command
from fedhar.errors import ConfigError, DataError


@pytest.mark.parametrize("name", list(WRITERS))
def test_summary_of_each_layout(layouts, name):
    s = data_summary(layouts[name])
    assert s["loader"] == name and s["kind"] == "recordings"
    assert s["subjects"] == list(SUBJECT_INDEX[name])
    assert (s["devices"], s["placements"]) == EXPECTED_TAGS[name]
    assert s["placements_available"]
    labelled = [c for c, n in s["classes"].items() if n > 0]
    assert labelled and all(s["class_hours"][c] > 0 for c in labelled)
    assert abs(sum(s["subject_hours"].values()) - s["hours"]) < 1e-2
    w = s["windows"]
    assert w["settings"] == {"window": 128, "overlap": 0.5, "sample_rate_hz": 50.0, "label_rule": "inside"}
    assert w["total"] == sum(w["per_class"].values()) == sum(w["per_subject"].values()) > 0
    assert set(w["per_class"]) == set(s["label_names"])
    json.dumps(s)  # everything is JSON-ready


def test_summary_reports_nan_and_skips(layouts):
    s = data_summary(layouts["pamap2"])
    assert s["nan_samples"] == 2 * L.PAMAP2_LONG_NAN[1]
    assert any("NaN" in msg for msg in s["windows"]["skipped"])
    assert data_summary(layouts["realworld"])["skipped"]  # the missing waist file


def test_info_command_prints_a_table(layouts, capsys):
    assert info_command(str(layouts["hhar"]), "auto", False) == 0
    out = capsys.readouterr().out
    for text in ("fedhar data info", "hhar", "nexus4", "stairsdown", "default windows", "phone, watch, all"):
        assert text in out


def test_info_command_json_and_explicit_dataset(layouts, capsys):
    assert info_command(str(layouts["wisdm"]), "wisdm", True) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dataset"] == "wisdm" and s["subjects"] == ["1600", "1601"] and s["sample_rates_hz"] == [20.0]


def test_info_on_npz_window_set(tmp_path, capsys):
    path = L.write_npz(tmp_path / "w.npz", n=10, length=64)
    s = data_summary(path)
    assert s["kind"] == "windows" and s["windows"] == 10 and s["window_samples"] == 64
    assert s["classes"] == {"rest": 5, "move": 5} and s["windows_per_subject"] == {"1": 5, "2": 5}
    assert info_command(str(path), None, False) == 0
    assert "10 × 64 samples" in capsys.readouterr().out


def test_info_errors_propagate_for_the_cli(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        info_command(str(tmp_path / "missing"), "auto", False)
    with pytest.raises(DataError, match="unknown dataset `nope`"):
        info_command(str(tmp_path), "nope", True)


def test_sample_rate_option_reads_csvs_without_a_time_column(tmp_path, capsys):
    from fedhar.cli.main import main

    folder = tmp_path / "untimed"
    folder.mkdir()
    header = "acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label\n"
    (folder / "s1.csv").write_text(header + "0,0,1,0,0,0,sit\n" * 300)
    with pytest.raises(DataError, match="no time column"):
        data_summary(folder)
    assert main(["data", "info", str(folder), "--sample-rate", "25", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["sample_rates_hz"] == [25.0] and s["recording_seconds"]["max"] == 12.0
    with pytest.raises(ConfigError, match=r"--sample-rate: pamap2 files have a fixed rate; the option is for "
                                          r"\['hhar', 'realworld', 'wisdm', 'generic'\]"):  # fmt: skip
        data_summary(L.write_pamap2(tmp_path / "pamap2"), "pamap2", sample_rate=50.0)
