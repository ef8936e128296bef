"""Fixtures shared by the data layer's tests."""

from __future__ import annotations

import pytest

from tests.fixtures.layouts import WRITERS


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Every fixture layout in its official form, written once per test module: name → path."""
    base = tmp_path_factory.mktemp("layouts")
    return {name: write(base / name) for name, write in WRITERS.items()}
