"""fedhar.deploy.flower_internals: the Flower version its internals were written against, checked on import."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

from fedhar.deploy import flower_internals
from fedhar.errors import FedharError

REPO = Path(__file__).resolve().parents[2]


def _load_fresh(name: str = "fedhar_flower_internals_probe"):
    """Execute the adapter's source as a new module (the imported one stays as it is)."""
    spec = importlib.util.spec_from_file_location(name, flower_internals.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pinned_and_installed_flower_is_supported():
    pyproject = (REPO / "pyproject.toml").read_text()
    (pin,) = re.findall(r'"flwr(?:\[[^\]]*\])?==([^"]+)"', pyproject)
    assert pin in flower_internals.SUPPORTED_FLOWER_VERSIONS
    assert flower_internals.installed_flower_version() == pin
    assert flower_internals.check_flower_version() == pin


def test_another_flower_version_fails_on_import_naming_both_versions_and_the_fix(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.43.0" if name == "flwr" else real(name))
    with pytest.raises(FedharError) as e:
        _load_fresh()
    assert type(e.value).__name__ == "FlowerVersionError"
    message = str(e.value)
    assert "flwr 1.43.0" in message and "1.42.0" in message
    assert "pip install 'flwr[simulation]==1.42.0'" in message


def test_no_flower_installed_is_said_so(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(flower_internals.FlowerVersionError, match="this environment has no flwr"):
        flower_internals.check_flower_version()


def test_the_supported_version_loads_the_internals():
    module = _load_fresh()
    for name in module.__all__:
        assert hasattr(module, name), name
    assert module.HttpGrid is flower_internals.HttpGrid


def test_a_task_grid_retries_with_fedhars_policy_and_hands_over_its_runtime_client():
    """HttpGrid keeps its retry policy and Runtime API client private: the adapter sets and returns them, so a
    Flower that renames them fails here, not in a deployment."""
    from fedhar.deploy.flower_internals import RuntimeHttpClient, task_grid
    from fedhar.deploy.runtime import transient_retry

    retry = transient_retry(5.0)
    grid, runtime = task_grid("127.0.0.1:9", True, None, "token", retry)
    assert grid._retry_invoker is retry and isinstance(runtime, RuntimeHttpClient)
    assert runtime is grid._runtime_client
