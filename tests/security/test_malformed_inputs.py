"""Malformed input files give one line naming the file and the problem (exit code 2), never a traceback
(issue #20, item 9); the loaders are fuzzed with truncated, bit-flipped and inserted bytes."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pytest
from tests.fixtures.layouts import WRITERS, write_hapt, write_npz

from fedhar.cli.main import main
from fedhar.config import ModelConfig
from fedhar.data.loaders import load_recordings
from fedhar.data.loaders.generic import read_signal_csv
from fedhar.data.windows import WindowSet
from fedhar.errors import DataError, FedharError
from fedhar.model.har_model import DataSpec, build_model
from fedhar.model.state import save_checkpoint

HEADER = "timestamp,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z,label"


def write_csv(path, n=200):
    rows = [HEADER] + [f"{i / 50:.2f},0,0,1,0,0,0,{'sit' if i < n // 2 else 'walk'}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "error:" in err
    for name in names:
        assert name in err, err
    return err


@pytest.fixture
def checkpoint(tiny_windows, tmp_path):
    spec = DataSpec.from_windows(tiny_windows)
    spec.window_len = 64
    return save_checkpoint(build_model(ModelConfig(kind="deepconvlstm", hidden=8), spec), tmp_path / "ckpt")


# ---- binary bytes in text recordings -------------------------------------------------------------------------

BINARY = {
    "random": bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8)),
    "nul": b"1.0 0.0\x00 0.0\n" * 3,
    "utf8": b"1.0 0.0 0.0\n1.0 \xc3\x28 0.0\n",
}


@pytest.mark.parametrize("kind", sorted(BINARY))
def test_binary_bytes_in_a_hapt_recording(tmp_path, capsys, kind):
    root = write_hapt(tmp_path / "hapt")
    acc = root / "RawData" / "acc_exp01_user01.txt"
    acc.write_bytes(b"1.0 0.0 0.0\n" * 5 + BINARY[kind])
    with pytest.raises(DataError, match="acc_exp01_user01.txt"):
        load_recordings(root, "hapt")
    assert main(["data", "info", str(root)]) == 2
    _one_error_line(capsys, str(acc))


def test_invalid_utf8_names_the_line(tmp_path):
    root = write_hapt(tmp_path / "hapt")
    acc = root / "RawData" / "acc_exp01_user01.txt"
    acc.write_bytes(b"1.0 0.0 0.0\n" * 7 + b"\xff\xfe 0.0 0.0\n" + b"1.0 0.0 0.0\n" * 192)
    with pytest.raises(DataError, match=r"acc_exp01_user01\.txt line 8: .* not UTF-8 text"):
        load_recordings(root, "hapt")


@pytest.mark.parametrize("kind", sorted(BINARY))
def test_binary_bytes_in_a_generic_csv(tmp_path, checkpoint, capsys, kind):
    csv = write_csv(tmp_path / "rec.csv")
    csv.write_bytes(csv.read_bytes()[:300] + BINARY[kind] + csv.read_bytes()[300:])
    with pytest.raises(DataError, match="rec.csv"):
        read_signal_csv(csv)
    assert main(["predict", str(checkpoint), str(csv)]) == 2
    _one_error_line(capsys, str(csv))


def test_an_undecodable_header_or_label_table(tmp_path, capsys):
    folder = tmp_path / "generic"
    folder.mkdir()
    write_csv(folder / "a.csv")
    (folder / "labels.txt").write_bytes(b"sit\nwa\xe9lk\n")
    assert main(["data", "info", str(folder), "--dataset", "generic"]) == 2
    _one_error_line(capsys, str(folder / "labels.txt"), "line 2")


def test_a_huge_csv_field_is_one_line(tmp_path, checkpoint, capsys):
    csv = tmp_path / "big.csv"
    csv.write_text(HEADER + "\n" + '0,"' + "9" * 200_000 + '",0,1,0,0,0,sit\n')
    assert main(["predict", str(checkpoint), str(csv)]) == 2
    _one_error_line(capsys, str(csv))


def test_one_wild_timestamp_does_not_allocate_a_huge_grid(tmp_path):
    csv = write_csv(tmp_path / "rec.csv")
    lines = csv.read_text().splitlines()
    lines[150] = "1e12" + lines[150][lines[150].index(","):]
    csv.write_text("\n".join(lines[:151]) + "\n")
    with pytest.raises(DataError, match="a jump of .* before the sample on data row 150"):
        read_signal_csv(csv)


# ---- .npz window sets ----------------------------------------------------------------------------------------


def _npz_with(path, **arrays):
    base = dict(np.load(write_npz(path)))
    base.update(arrays)
    np.savez(path, **base)
    return path


def test_truncated_npz(tmp_path, capsys):
    path = write_npz(tmp_path / "w.npz")
    raw = path.read_bytes()
    for cut in (10, len(raw) // 3, len(raw) - 30):
        path.write_bytes(raw[:cut])
        with pytest.raises(DataError, match="w.npz"):
            WindowSet.load(path)
    assert main(["data", "info", str(path)]) == 2
    _one_error_line(capsys, str(path))


def test_object_arrays_are_never_unpickled(tmp_path, monkeypatch, capsys):
    """An object array needs pickle (arbitrary code on load): refused, and np.load never gets allow_pickle."""
    path = tmp_path / "w.npz"
    _npz_with(path, label_names=np.array([{"evil": 1}, "move"], dtype=object))
    original = np.load

    def no_pickle(*args, **kwargs):
        assert not kwargs.get("allow_pickle"), "np.load with allow_pickle=True"
        return original(*args, **kwargs)

    monkeypatch.setattr(np, "load", no_pickle)
    with pytest.raises(DataError, match="holds Python objects"):
        WindowSet.load(path)
    assert main(["data", "info", str(path)]) == 2
    _one_error_line(capsys, str(path), "objects")


def test_a_header_claiming_a_huge_array_is_refused_before_allocating(tmp_path, capsys):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"shape": (10**12, 6, 64), "fortran_order": False, "descr": "<f4"})
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 64)
        zf.writestr("y.npy", b"")
    with pytest.raises(DataError, match=r"claims shape \(1000000000000, 6, 64\)"):
        WindowSet.load(path)
    assert main(["data", "info", str(path)]) == 2
    _one_error_line(capsys, str(path), "claims shape")


def test_a_member_claiming_more_than_compression_allows_is_refused(tmp_path):
    """A deflated member whose directory entry claims ~4 GB from a few hundred bytes is refused before it is
    read (deflate expands at most ~1032 times)."""
    path = tmp_path / "bomb.npz"
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((4, 6, 64), np.float32))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", buf.getvalue())
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # the uncompressed size it claims
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="more than compression allows"):
        WindowSet.load(path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": np.array(3)}, "array `y`"),
        ({"y": np.zeros((12, 2))}, "array `y`"),
        ({"y": np.full(12, 0.5)}, "integer class indices"),
        ({"x": np.zeros((12, 6, 64), "U1")}, "not numbers"),
        ({"x": np.zeros((12, 64))}, "x must be"),
        ({"label_names": np.array([1.5, 2.5])}, "array `label_names`"),
        ({"label_names": np.array(["a", "a"])}, "distinct"),
        ({"sample_rate": np.array([50.0, 20.0])}, "sample_rate"),
        ({"sample_rate": np.array(-50.0)}, "sample_rate"),
        ({"subject": np.array("1")}, "array `subject`"),
        ({"start_s": np.zeros(3)}, "array `start_s`"),
        ({"group_sizes": np.array([3, 4])}, "do not split"),
        ({"synthetic": np.array(["yes"])}, "synthetic"),
    ],
)
def test_npz_arrays_of_the_wrong_shape_or_type(tmp_path, arrays, message):
    path = _npz_with(tmp_path / "w.npz", **arrays)
    with pytest.raises(DataError, match=message):
        WindowSet.load(path)


def test_npz_missing_layout_arrays(tmp_path):
    base = dict(np.load(write_npz(tmp_path / "w.npz")))
    del base["group_names"]
    np.savez(tmp_path / "w.npz", **base)
    with pytest.raises(DataError, match=r"lacks \['group_names'\]"):
        WindowSet.load(tmp_path / "w.npz")


def test_evaluate_on_a_damaged_npz_keeps_the_earlier_output(tmp_path, checkpoint, capsys):
    data = write_npz(tmp_path / "w.npz")
    data.write_bytes(data.read_bytes()[:-100])
    out = tmp_path / "metrics.json"
    out.write_text('{"earlier": true}')
    assert main(["evaluate", str(checkpoint), "--data", str(data), "--json", str(out)]) == 2
    _one_error_line(capsys, str(data))
    assert out.read_text() == '{"earlier": true}'


def test_a_damaged_window_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    from fedhar.config import DataConfig
    from fedhar.data.pipeline import load_windows

    monkeypatch.setenv("FEDHAR_WINDOW_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "generic"
    folder.mkdir()
    write_csv(folder / "a.csv", n=400)
    cfg = DataConfig(dataset="generic", path=str(folder), window=32)
    first = load_windows(cfg)
    cached = next((tmp_path / "cache").glob("*.npz"))
    cached.write_bytes(b"not a zip at all")
    cached.with_suffix(".skipped.json").write_bytes(b"\xff{")
    again = load_windows(cfg)
    assert not again.notes["cache_hit"] and np.array_equal(again.x, first.x)


# ---- through every CLI entry point ---------------------------------------------------------------------------


def test_train_on_a_damaged_recording_is_one_line(tmp_path, capsys):
    folder = tmp_path / "generic"
    folder.mkdir()
    for name in ("a", "b", "c"):
        write_csv(folder / f"{name}.csv", n=400)
    (folder / "b.csv").write_bytes((folder / "b.csv").read_bytes()[:2000] + b"\x80\x81\x82\n")
    code = main(["train", "--quiet", f"output_dir={tmp_path / 'runs'}", "name=t", "data.dataset=generic",
                 f"data.path={folder}", "data.window=32", "model.kind=deepconvlstm", "model.hidden=8",
                 "train.epochs=1", f"data.cache_dir={tmp_path / 'cache'}"])  # fmt: skip
    assert code == 2  # the damaged file was read (not silently left out of the folder) and named
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line or "Traceback" in line]
    assert len(errors) == 1 and str(folder / "b.csv") in errors[0] and "not UTF-8" in errors[0], errors


def test_a_realworld_zip_with_a_damaged_deflate_stream(tmp_path, capsys):
    from fixtures.layouts import write_realworld

    root = write_realworld(tmp_path / "rw")
    target = next(root.rglob("acc_walking_csv.zip"))
    members = {}
    with zipfile.ZipFile(target) as zf:
        for name in zf.namelist():
            members[name] = zf.read(name)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with zipfile.ZipFile(target) as zf:
        waist = next(i for i in zf.infolist() if i.filename.endswith("_waist.csv"))  # the default placement
    start = waist.header_offset + 30 + len(waist.filename) + len(waist.extra) + 20
    raw = bytearray(target.read_bytes())
    raw[start : start + 10] = b"\xff" * 10  # inside that member's deflate stream: a zlib.error, once
    target.write_bytes(bytes(raw))
    assert main(["data", "info", str(root)]) == 2
    _one_error_line(capsys, str(target))


def test_an_os_error_naming_a_file_is_one_line_and_others_are_not_hidden(monkeypatch, capsys, tmp_path):
    import fedhar.data.info

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret.csv"))

    monkeypatch.setattr(fedhar.data.info, "info_command", denied)
    assert main(["data", "info", str(tmp_path)]) == 2
    _one_error_line(capsys, "secret.csv", "Permission denied")

    def broken(*args, **kwargs):
        raise OSError("no file involved: a bug or a system problem")

    monkeypatch.setattr(fedhar.data.info, "info_command", broken)
    with pytest.raises(OSError, match="no file involved"):
        main(["data", "info", str(tmp_path)])


# ---- fuzzing every loader layout -----------------------------------------------------------------------------

LAYOUTS = {**WRITERS, "hapt": write_hapt}


def _mutate(raw: bytes, rng) -> bytes:
    b = bytearray(raw)
    op = int(rng.integers(5))
    if op == 0 and len(b) > 1:
        return bytes(b[: int(rng.integers(len(b)))])
    i = int(rng.integers(len(b) + 1))
    if op == 1:
        for _ in range(int(rng.integers(1, 8))):
            j = int(rng.integers(max(len(b), 1)))
            if j < len(b):
                b[j] ^= 1 << int(rng.integers(8))
    elif op == 2:
        b[i:i] = rng.bytes(int(rng.integers(1, 16)))
    elif op == 3:
        b[i:i] = b"\x00\xff\xfe"
    else:
        b[i:i] = b"\xc3\x28"  # an invalid UTF-8 sequence
    return bytes(b)


def _loads_or_fedhar_error(call) -> bool:
    try:
        call()
    except FedharError:
        return False
    return True  # any other exception type fails the test


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz_sources")
    found = {name: writer(base / name) for name, writer in LAYOUTS.items()}
    npz = write_npz(base / "npz" / "w.npz")
    np.savez_compressed(base / "npz" / "c.npz", **dict(np.load(npz)))
    return found, [npz, base / "npz" / "c.npz"]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_fuzzed_layout_files_load_or_fail_as_fedhar_errors(sources, tmp_path, name):
    rng = np.random.default_rng(sorted(LAYOUTS).index(name))
    source = sources[0][name]
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    for i in range(10):
        copy = shutil.copytree(source, tmp_path / f"m{i}")
        target = copy / files[int(rng.integers(len(files)))]
        target.write_bytes(_mutate(target.read_bytes(), rng))
        _loads_or_fedhar_error(lambda: load_recordings(copy, name))


def test_fuzzed_npz_files_load_or_fail_as_fedhar_errors(sources, tmp_path):
    rng = np.random.default_rng(7)
    rejected = 0
    for source in sources[1]:
        raw = source.read_bytes()
        for i in range(30):
            path = tmp_path / f"m{i}-{source.name}"
            path.write_bytes(_mutate(raw, rng))
            rejected += not _loads_or_fedhar_error(lambda: WindowSet.load(path))
            _loads_or_fedhar_error(lambda: load_recordings(path, "generic"))
    assert rejected > 20


def test_a_binary_config_file_is_one_line_exit_2(tmp_path, capsys):
    from fedhar.cli.main import main as cli

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: x\n\xff\xfe\x00garbage")
    assert cli(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml is not a UTF-8 text file" in err[0]
