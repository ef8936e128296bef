"""pyproject.toml lists fedhar's packages by hand (to install configs/ as fedhar.configs): keep the list complete."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_and_the_configs_are_shipped():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("fedhar", "clients", "server")
             for p in (ROOT / top).rglob("__init__.py")}  # fmt: skip
    assert set(tool["packages"]) == found | {"fedhar.configs"}
    folder = ROOT / tool["package-dir"]["fedhar.configs"]
    assert tool["package-data"]["fedhar.configs"] == ["*.yaml"] and (folder / "default.yaml").is_file()
