"""The benchmark recipes' shared parts (fedhar.benchmarks): settings from each recipe's YAML with flags on top,
``--quick`` layered over the defaults, every YAML key a flag of its study, and the engine overhead read from the
timings `fedhar simulate` records."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import yaml

from fedhar.benchmarks import continual, deploy, federated, footprint, models, robustness, seeds
from fedhar.benchmarks.recipe import RECIPE_CONFIGS, dispatch, parse

REPO = Path(__file__).resolve().parents[2]

#: every recipe's studies: (entry point in simulations/, study name as the YAML names it, function)
STUDIES = [("models", "compare", models.compare), ("models", "sweep", models.sweep),
           ("models", "seeds", seeds.seed_study), ("models", "ensemble", seeds.ensemble),
           ("models", "throughput", models.throughput), ("federated", "compare", federated.compare),
           ("federated", "partitions", federated.partitions), ("footprint", "simulate", footprint.simulate),
           ("footprint", "overhead", footprint.overhead), ("footprint", "data", footprint.data_load),
           ("deploy", "deploy", deploy.main), ("continual", "continual", continual.main),
           ("robustness", "robustness", robustness.main)]  # fmt: skip


def _parser(*flags: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    for flag in flags:
        p.add_argument(flag)
    p.add_argument("overrides", nargs="*")
    return p


def _recipe(tmp_path: Path, settings: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_defaults_come_from_the_yaml_quick_layers_on_top_and_flags_win(tmp_path):
    path = _recipe(tmp_path, {"x": {"defaults": {"out": "runs/full", "clients-per-round": "10"},
                                    "quick": {"out": "runs/quick", "overrides": ["federated.rounds=2"]}}})  # fmt: skip
    full = parse(_parser("--out", "--clients-per-round"), ["--recipe-config", str(path)], "x")
    assert (full.out, full.clients_per_round, full.overrides, full.quick) == ("runs/full", "10", [], False)
    quick = parse(_parser("--out", "--clients-per-round"), ["--recipe-config", str(path), "--quick", "a=1"], "x")
    assert (quick.out, quick.clients_per_round) == ("runs/quick", "10")
    assert quick.overrides == ["federated.rounds=2", "a=1"]  # the quick run's overrides first: the command's win
    mine = parse(_parser("--out", "--clients-per-round"), ["--recipe-config", str(path), "--quick", "--out", "o"], "x")
    assert mine.out == "o"


def test_a_yaml_key_that_is_no_flag_stops_with_its_name(tmp_path):
    path = _recipe(tmp_path, {"x": {"defaults": {"rounds": 3}}})
    with pytest.raises(SystemExit, match="`rounds` is not a flag of x"):
        parse(_parser("--out"), ["--recipe-config", str(path)], "x")
    path = _recipe(tmp_path, {"x": {"default": {"out": "o"}}})
    with pytest.raises(SystemExit, match=r"holds \['default'\]; expected `defaults` and `quick`"):
        parse(_parser("--out"), ["--recipe-config", str(path)], "x")


@pytest.mark.parametrize("recipe, study, fn", STUDIES, ids=[f"{r}-{s}" for r, s, _ in STUDIES])
@pytest.mark.parametrize("quick", [False, True])
def test_every_shipped_yaml_key_is_a_flag_of_its_study(recipe, study, fn, quick, capsys):
    """The shipped settings parse (an unknown key would stop with its name); an unknown flag after them is then
    argparse's own error (exit 2), which shows that the YAML was read and accepted first."""
    assert study in yaml.safe_load((RECIPE_CONFIGS / f"{recipe}.yaml").read_text())
    with pytest.raises(SystemExit) as stop:
        fn([*(["--quick"] if quick else []), "--no-such-flag"])
    assert stop.value.code == 2, stop.value.code
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_a_recipe_with_studies_names_them_when_none_is_given():
    ran = []
    dispatch({"compare": ran.append}, ["compare", "--out", "x"], "doc")
    assert ran == [["--out", "x"]]
    with pytest.raises(SystemExit, match="name a study first: one of compare, sweep"):
        dispatch({"compare": ran.append, "sweep": ran.append}, ["compre"], "doc")


def test_every_entry_point_is_thin_and_has_its_settings():
    """simulations/<recipe>.py only calls fedhar.benchmarks (scale.py keeps its Flower-timing child), and each one
    has simulations/configs/<recipe>.yaml."""
    for script in sorted((REPO / "simulations").glob("*.py")):
        assert (RECIPE_CONFIGS / f"{script.stem}.yaml").is_file(), script.name
        if script.stem == "scale":
            continue
        tree = ast.parse(script.read_text())
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert not functions, f"{script.name} defines {[f.name for f in functions]}: recipe logic goes in fedhar.benchmarks"


def test_no_test_reaches_a_recipe_through_sys_path():
    needle = "sys.path." + "insert"  # spelt apart: this file would find itself
    for test in sorted((REPO / "tests").rglob("test_*.py")):
        assert needle not in test.read_text(), test.name


def test_engine_overhead_is_the_round_minus_the_clients_and_the_central_evaluation():
    rounds = {"rounds": [{"round": 1, "round_seconds": 10.0, "central_eval_seconds": 2.0},
                         {"round": 2, "round_seconds": 6.0, "central_eval_seconds": 1.0},
                         {"round": 3, "round_seconds": 5.0, "central_eval_seconds": 1.0}],
              "clients": [{"round": 1, "client_seconds": 3.0}, {"round": 1, "client_seconds": 3.0},
                          {"round": 2, "client_seconds": 2.0}, {"round": 2, "client_seconds": 2.0},
                          {"round": 3, "client_seconds": 1.5}, {"round": 3, "client_seconds": 1.5}]}  # fmt: skip
    o = footprint.round_overheads(rounds)
    assert [r["engine_seconds"] for r in o["per_round"]] == [2.0, 1.0, 1.0]
    assert (o["rounds_seconds"], o["clients_seconds"], o["central_eval_seconds"], o["engine_seconds"]) == (
        21.0, 13.0, 4.0, 4.0)
    assert o["rounds_ratio"] == round(21 / 17, 3) and o["steady_rounds_ratio"] == round(11 / 9, 3)
