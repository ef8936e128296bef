"""Bad input fails with a DataError that names the file, the line where there is one, and the fix."""

from __future__ import annotations

import io
import zipfile

import pytest
from tests.fixtures import layouts as L

from fedhar.data.loaders import load_recordings
from fedhar.data.loaders.generic import read_signal_csv
from fedhar.errors import ConfigError, DataError


def _replace_line(path, line: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def _edit(path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_missing_path_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_recordings(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no known dataset layout"):
        load_recordings(tmp_path)


# ---- UCI-HAR -----------------------------------------------------------------------------------


def test_uci_har_errors(tmp_path):
    root = L.write_uci_har(tmp_path / "a")
    train = root / "UCI HAR Dataset" / "train"
    _replace_line(train / "y_train.txt", 3, "9")
    with pytest.raises(DataError, match=r"y_train\.txt line 3: activity 9 is outside activity_labels\.txt"):
        load_recordings(root, "uci_har")
    root = L.write_uci_har(tmp_path / "b")
    signals = root / "UCI HAR Dataset" / "train" / "Inertial Signals"
    _replace_line(signals / "total_acc_y_train.txt", 2, " ".join(["1.0"] * 127 + ["abc"]))
    with pytest.raises(DataError, match=r"total_acc_y_train\.txt line 2"):
        load_recordings(root, "uci_har")
    signals = L.write_uci_har(tmp_path / "b2") / "UCI HAR Dataset" / "train" / "Inertial Signals"
    (signals / "body_gyro_z_train.txt").unlink()
    with pytest.raises(DataError, match=r"body_gyro_z_train\.txt is missing"):
        load_recordings(tmp_path / "b2", "uci_har")
    root = L.write_uci_har(tmp_path / "c")
    (root / "UCI HAR Dataset" / "test" / "subject_test.txt").write_text("2\n")
    with pytest.raises(DataError, match=r"subject_test\.txt has 1 lines but Inertial Signals/ has 7 windows"):
        load_recordings(root, "uci_har")
    with pytest.raises(DataError, match="UCI HAR Dataset"):
        load_recordings(tmp_path / "c" / "UCI HAR Dataset" / "train", "uci_har")
    with pytest.raises(DataError, match="has no placement `wrist`"):
        load_recordings(root, "uci_har", placement="wrist")


# ---- HAPT --------------------------------------------------------------------------------------


def _write_hapt(root):
    """A minimal RawData/ folder: one experiment of 100 samples, one labelled segment."""
    return L.write_hapt(root, samples=100, segments="1 1 5 10 89\n", row="0.0 0.0 1.0\n")


def test_hapt_errors(tmp_path):
    root = _write_hapt(tmp_path / "a")
    assert load_recordings(root, "hapt", placement="waist").subjects() == ["1"]
    with pytest.raises(DataError, match="HAPT has no placement `wrist`; set `data.placement` to one of"):
        load_recordings(root, "hapt", placement="wrist")
    with pytest.raises(ConfigError, match=r"hapt loader has no option `sample_rate`; it accepts \['placement'\]"):
        load_recordings(root, "hapt", sample_rate=50.0)
    stray = root / "RawData" / "acc_exp01_user01 (copy).txt"
    stray.write_text("0.0 0.0 1.0\n")
    with pytest.raises(DataError, match=r"acc_exp01_user01 \(copy\)\.txt: expected a file name acc_expNN_userUU\.txt"):
        load_recordings(root, "hapt")


# ---- MotionSense -------------------------------------------------------------------------------


def test_motionsense_errors(tmp_path):
    root = L.write_motionsense(tmp_path / "a")
    path = root / "A_DeviceMotion_data" / "wlk_7" / "sub_2.csv"
    _edit(path, "userAcceleration.x", "userAccel.x")
    with pytest.raises(DataError, match=r"sub_2\.csv line 1: columns \['userAcceleration\.x'\] missing"):
        load_recordings(root)
    root = L.write_motionsense(tmp_path / "b")
    path = root / "A_DeviceMotion_data" / "dws_1" / "sub_3.csv"
    _replace_line(path, 5, "3,0.1,-1.2,2.0,oops,0,0,0,0,0,0,0,0")
    with pytest.raises(DataError, match=r"sub_3\.csv line 5: `gravity\.x` value `oops` is not a number"):
        load_recordings(root)
    root = L.write_motionsense(tmp_path / "c")
    (root / "A_DeviceMotion_data" / "fly_9").mkdir()
    (root / "A_DeviceMotion_data" / "fly_9" / "sub_1.csv").write_text(path.read_text())
    with pytest.raises(DataError, match="activity `fly` is not one of MotionSense's"):
        load_recordings(root, "motionsense")
    with pytest.raises(DataError, match="A_DeviceMotion_data"):
        load_recordings(tmp_path, "motionsense")


# ---- HHAR --------------------------------------------------------------------------------------


def test_hhar_errors(tmp_path):
    root = L.write_hhar(tmp_path / "a")
    acc = root / "Activity recognition exp" / "Phones_accelerometer.csv"
    lines = acc.read_text().splitlines()
    _replace_line(acc, 7, lines[6].rsplit(",", 1)[0] + ",jump")
    with pytest.raises(DataError, match=r"Phones_accelerometer\.csv line 7: gt `jump` is not an HHAR label"):
        load_recordings(root)
    _replace_line(acc, 7, lines[6])
    parts = lines[9].split(",")
    parts[3] = "n/a"
    _replace_line(acc, 10, ",".join(parts))
    with pytest.raises(DataError, match=r"Phones_accelerometer\.csv line 10: `x` value `n/a` is not a number"):
        load_recordings(root)
    (root / "Activity recognition exp" / "Phones_gyroscope.csv").unlink()
    with pytest.raises(DataError, match=r"Phones_gyroscope\.csv is missing"):
        load_recordings(root, "hhar")
    root = L.write_hhar(tmp_path / "b")
    _replace_line(root / "Activity recognition exp" / "Phones_gyroscope.csv", 12, "   ")
    with pytest.raises(DataError, match=r"Phones_gyroscope\.csv line 12: a line of only spaces"):
        load_recordings(root)
    _edit(root / "Activity recognition exp" / "Watch_gyroscope.csv", "Creation_Time", "Created")
    with pytest.raises(DataError, match=r"Watch_gyroscope\.csv line 1: columns \['Creation_Time'\] missing"):
        load_recordings(root, placement="watch")
    with pytest.raises(DataError, match="has no placement `ankle`"):
        load_recordings(root, placement="ankle")


def test_hhar_timestamps_not_in_nanoseconds(tmp_path):
    root = L.write_hhar(tmp_path)
    for name in ("Phones_accelerometer.csv", "Phones_gyroscope.csv"):
        path = root / "Activity recognition exp" / name
        rows = path.read_text().splitlines()
        out = [rows[0]]
        for row in rows[1:]:
            parts = row.split(",")
            parts[2] = str(int(parts[2]) // 1_000_000_000)  # seconds, not ns
            out.append(",".join(parts))
        path.write_text("\n".join(out) + "\n")
    with pytest.raises(DataError, match="Creation_Time must be in nanoseconds"):
        load_recordings(root)


# ---- RealWorld ---------------------------------------------------------------------------------


def test_realworld_errors(tmp_path):
    root = L.write_realworld(tmp_path / "a")
    data = root / "realworld2016_dataset" / "proband1" / "data"
    (data / "acc_walking_csv.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"acc_walking_csv\.zip is not a readable zip"):
        load_recordings(root)
    root = L.write_realworld(tmp_path / "b")
    data = root / "realworld2016_dataset" / "proband2" / "data"
    with zipfile.ZipFile(data / "gyr_walking_csv.zip") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    text = members["Gyroscope_walking_waist.csv"].decode().splitlines()
    text[4] = text[4].rsplit(",", 1)[0] + ",x1"
    members["Gyroscope_walking_waist.csv"] = ("\n".join(text) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    (data / "gyr_walking_csv.zip").write_bytes(buf.getvalue())
    bad_cell = r"gyr_walking_csv\.zip:Gyroscope_walking_waist\.csv line 5: `attr_z` value `x1`"
    with pytest.raises(DataError, match=bad_cell):
        load_recordings(root)
    with pytest.raises(DataError, match="has no placement `hand`"):
        load_recordings(root, placement="hand")
    (tmp_path / "c" / "proband3").mkdir(parents=True)
    (tmp_path / "c" / "proband3" / "notes.txt").write_text("")
    with pytest.raises(DataError, match=r"proband3/data is missing"):
        load_recordings(tmp_path / "c", "realworld")


# ---- WISDM -------------------------------------------------------------------------------------


def test_wisdm_errors(tmp_path):
    root = L.write_wisdm(tmp_path / "a")
    path = root / "wisdm-dataset" / "raw" / "phone" / "accel" / "data_1601_accel_phone.txt"
    lines = path.read_text().splitlines()
    _replace_line(path, 4, lines[3].replace(",A,", ",Z,"))
    with pytest.raises(DataError, match=r"data_1601_accel_phone\.txt line 4: activity code `Z` is not in activity_key"):
        load_recordings(root)
    _replace_line(path, 4, lines[3].replace("1601,", "1650,", 1))
    with pytest.raises(DataError, match=r"data_1601_accel_phone\.txt line 4: subject 1650 in a file of subject 1601"):
        load_recordings(root)
    _replace_line(path, 4, lines[3].replace(",A,", ",A,soon"))
    with pytest.raises(DataError, match=r"data_1601_accel_phone\.txt line 4: `t` value .* is not an integer"):
        load_recordings(root)
    root = L.write_wisdm(tmp_path / "b")
    for f in (root / "wisdm-dataset" / "raw" / "watch" / "gyro").iterdir():
        f.unlink()
    (root / "wisdm-dataset" / "raw" / "watch" / "gyro").rmdir()
    with pytest.raises(DataError, match=r"raw/watch/gyro is missing"):
        load_recordings(root, placement="watch")
    _edit(root / "wisdm-dataset" / "activity_key.txt", "jogging = B", "jogging: B")
    with pytest.raises(DataError, match=r"activity_key\.txt line 2: expected `activity = LETTER`"):
        load_recordings(root)


# ---- PAMAP2 ------------------------------------------------------------------------------------


def test_pamap2_errors(tmp_path):
    root = L.write_pamap2(tmp_path / "a")
    path = root / "PAMAP2_Dataset" / "Protocol" / "subject102.dat"
    lines = path.read_text().splitlines()
    parts = lines[200].split()
    parts[1] = "8"
    _replace_line(path, 201, " ".join(parts))
    with pytest.raises(DataError, match=r"subject102\.dat line 201: activityID 8 is not a PAMAP2 activity"):
        load_recordings(root)
    parts[1], parts[5] = "1", "wobble"
    _replace_line(path, 201, " ".join(parts))
    with pytest.raises(DataError, match=r"subject102\.dat line 201: `accy` value `wobble` is not a number"):
        load_recordings(root)
    path.write_text("\n".join(" ".join(row.split()[:53]) for row in lines) + "\n")
    with pytest.raises(DataError, match=r"subject102\.dat line 1: 53 columns, a PAMAP2 \.dat file has 54"):
        load_recordings(root)
    with pytest.raises(DataError, match="has no placement `waist`"):
        load_recordings(root, placement="waist")


# ---- generic CSV -------------------------------------------------------------------------------


def test_generic_csv_errors(tmp_path):
    root = L.write_generic_csv(tmp_path / "a")
    (root / "labels.txt").write_text("sit\n")
    with pytest.raises(DataError, match=r"alice\.csv line 252: label `walk` is not in the label table \['sit'\]"):
        load_recordings(root)
    (root / "labels.txt").unlink()
    _replace_line(root / "bob.csv", 10, "180,9.8,0.98,0.19,28.6,2.8,-11.4")
    with pytest.raises(DataError, match=r"bob\.csv line 10: 7 cells but the header has 8"):
        load_recordings(root)
    _replace_line(root / "bob.csv", 10, "180,9.8,x,0.19,28.6,2.8,-11.4,sit")
    with pytest.raises(DataError, match=r"bob\.csv line 10: acc_y `x` is not a number"):
        load_recordings(root)
    _replace_line(root / "bob.csv", 10, "1,9.8,0.98,0.19,28.6,2.8,-11.4,sit")
    with pytest.raises(DataError, match=r"bob\.csv line 10: time goes backwards"):
        load_recordings(root)


def test_read_signal_csv_errors(tmp_path):
    path = tmp_path / "raw.csv"
    path.write_text("timestamp,acc_x,acc_y,acc_z\n" + "".join(f"{i / 50},0.1,9.7,1.0\n" for i in range(60)))
    with pytest.raises(DataError, match=r"acc columns have no unit .* name them acc_x\[m/s\^2\]"):
        read_signal_csv(path)
    signal, layout, rate, labels = read_signal_csv(path, units="acc=m/s^2")
    assert abs(signal[0, 1] - 9.7 / L.G) < 1e-6 and layout.channels == ("acc_x", "acc_y", "acc_z")
    path.write_text("acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z\n" + "0,0,1,0,0,0\n" * 10)
    with pytest.raises(DataError, match="no time column .* give the rate it was recorded at"):
        read_signal_csv(path)
    assert read_signal_csv(path, sample_rate=25)[2] == 25.0
    path.write_text("time,acc_x,acc_y\n0,1,2\n")
    with pytest.raises(DataError, match=r"line 1: sensor `acc` needs columns for x, y and z"):
        read_signal_csv(path)
    path.write_text("time,label\n0,a\n")
    with pytest.raises(DataError, match="no channel columns"):
        read_signal_csv(path)
    path.write_text("time,acc_x[furlong],acc_y,acc_z\n0,1,2,3\n")
    with pytest.raises(DataError, match="unknown unit `furlong`"):
        read_signal_csv(path)
    path.write_text("time,gyro_x,gyro_y,gyro_z\n" + "".join(f"{i / 50},120,0,0\n" for i in range(10)))
    with pytest.raises(DataError, match=r"gyro columns have no unit and, read as rad/s, values up to 120\.0"):
        read_signal_csv(path)
    # a stated unit that cannot be right: m/s^2 values declared as g (a wrong --units) fail too
    path.write_text("time,acc_x,acc_y,acc_z\n" + "".join(f"{i / 50},0.1,9.7,1.0\n" for i in range(60)))
    with pytest.raises(DataError, match=r"acc read in g \(the column header or the units option\) gives a median "
                                        r"magnitude of 9\.75 g; check that unit"):  # fmt: skip
        read_signal_csv(path, units="acc=g")
    with pytest.raises(DataError, match="does not exist"):
        read_signal_csv(tmp_path / "missing.csv")


def test_generic_unit_of_another_sensor_group_names_file_and_column(tmp_path):
    path = tmp_path / "raw.csv"
    path.write_text("time,acc_x[deg/s],acc_y[deg/s],acc_z[deg/s]\n" + "".join(f"{i / 50},0,0,1\n" for i in range(10)))
    with pytest.raises(DataError, match=r"raw\.csv line 1: column acc_x\[deg/s\] has unit deg/s, which is not a "
                                        r"unit of acc; use g or m/s\^2"):  # fmt: skip
        read_signal_csv(path)
    path.write_text("time,acc_x,acc_y,acc_z\n" + "".join(f"{i / 50},0,0,1\n" for i in range(10)))
    with pytest.raises(DataError, match=r"units: `acc=deg/s` is not a unit of acc; use g or m/s\^2"):
        read_signal_csv(path, units="acc=deg/s")


@pytest.mark.parametrize(
    ("column", "scale", "step", "read_as"),
    [("timestamp", 1e3, "20", "seconds"), ("timestamp_ms", 1e9, "2e\\+04", "milliseconds"),
     ("timestamp_ms", 1.0, "2e-05", "milliseconds")],
)  # fmt: skip
def test_generic_time_column_in_another_unit_fails(tmp_path, column, scale, step, read_as):
    """Epoch milliseconds under `timestamp` would grid a 50 Hz stream at 0.05 Hz; the step found says so."""
    path = tmp_path / "raw.csv"
    rows = "".join(f"{(1_700_000_000 + i / 50) * scale:.6f},0,0,1\n" for i in range(50))
    path.write_text(f"{column},acc_x,acc_y,acc_z\n" + rows)
    with pytest.raises(DataError, match=rf"raw\.csv: samples are {step} s apart \(median\) with `{column}` read as "
                                        rf"{read_as}; name the column for its unit: timestamp \(s\), timestamp_ms"):
        read_signal_csv(path)
