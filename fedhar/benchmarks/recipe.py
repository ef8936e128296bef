"""A recipe's command line: its settings come from ``simulations/configs/<recipe>.yaml``, flags override them.

The YAML holds, per study of the recipe (``compare``, ``sweep``… or the recipe's name when it has one study),
``defaults`` (the full run, as docs/benchmarks.md measured it) and ``quick`` (what ``--quick`` changes: a small
run of every kind of row, minutes on 2 CPU cores). Keys are the flags' names (``--clients-per-round``:
``clients-per-round``); ``overrides`` in ``quick`` are ``key=value`` config overrides added before the command
line's. ``--recipe-config FILE`` reads another YAML of the same shape.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import yaml

from fedhar.benchmarks.runner import REPO

RECIPE_CONFIGS = REPO / "simulations" / "configs"


def recipe_settings(recipe: str, study: str, path: Path | None = None) -> dict:
    """The ``{defaults, quick}`` of one study from the recipe's YAML (empty where there is no such file)."""
    path = path or RECIPE_CONFIGS / f"{recipe}.yaml"
    if not path.is_file():
        if path != RECIPE_CONFIGS / f"{recipe}.yaml":
            raise SystemExit(f"--recipe-config {path}: no such file")
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    section = data.get(study, {}) or {}
    unknown = set(section) - {"defaults", "quick"}
    if unknown:
        raise SystemExit(f"{path}: `{study}` holds {sorted(unknown)}; expected `defaults` and `quick`")
    return section


def parse(p: argparse.ArgumentParser, argv: list[str] | None, recipe: str, study: str | None = None
          ) -> argparse.Namespace:  # fmt: skip
    """Parse ``argv`` with the study's YAML settings as the defaults (``--quick``: its quick settings on top)."""
    p.add_argument("--quick", action="store_true", help="a small run of every kind of row (the YAML's `quick`)")
    p.add_argument("--recipe-config", type=Path, metavar="YAML",
                   help=f"the recipe's settings (default: simulations/configs/{recipe}.yaml)")  # fmt: skip
    known, _ = p.parse_known_args(argv)
    settings = recipe_settings(recipe, study or recipe, known.recipe_config)
    layers = [settings.get("defaults") or {}, *([settings.get("quick") or {}] if known.quick else [])]
    dests = {a.dest for a in p._actions}
    quick_overrides: list[str] = []
    for layer in layers:
        for key, value in layer.items():
            dest = key.replace("-", "_")
            if key == "overrides":
                quick_overrides += [str(v) for v in value]
                continue
            if dest not in dests:
                raise SystemExit(f"simulations/configs/{recipe}.yaml: `{key}` is not a flag of {study or recipe}")
            p.set_defaults(**{dest: value})
    args = p.parse_args(argv)
    if quick_overrides:
        args.overrides = [*quick_overrides, *args.overrides]
    return args


def dispatch(studies: dict[str, Callable[[list[str]], None]], argv: list[str] | None, doc: str) -> None:
    """``<recipe>.py STUDY [flags]``: run one study of a recipe with the rest of the command line."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in studies:
        names = ", ".join(studies)
        if argv and argv[0] in ("-h", "--help"):
            print(doc.strip() + f"\n\nstudies: {names} (`STUDY --help` for each one's flags)")
            raise SystemExit(0)
        raise SystemExit(f"name a study first: one of {names}" + (f" (got `{argv[0]}`)" if argv else ""))
    studies[argv[0]](argv[1:])
