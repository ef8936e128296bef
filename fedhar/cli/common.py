"""Pieces shared by subcommands: config arguments and result printing."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from fedhar.console import console  # noqa: F401 - the commands import it from here


def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML experiment config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=3")


def print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "macro_f1", "loss", "num_windows"):
        if key in metrics:
            v = metrics[key]
            table.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
    for name, f1 in metrics.get("per_class_f1", {}).items():
        table.add_row(f"F1 {name}", f"{f1:.4f}")
    console.print(table)


def check_writable(path: str, option: str, inputs: list[str] = ()) -> None:
    """Fail before the work, not after it: an output path whose folder is missing, that is a folder, or that is
    one of the command's own inputs (writing there would destroy it)."""
    from pathlib import Path

    from fedhar.errors import ConfigError

    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file path inside it")
    if not target.parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {target.parent} does not exist; create it or choose another path")
    if any(target.resolve() == Path(i).resolve() for i in inputs):
        raise ConfigError(f"{option} {path} is also an input of this command: writing there would overwrite it")


def dump_json(data: dict) -> str:
    return json.dumps(data, indent=2, default=str)
