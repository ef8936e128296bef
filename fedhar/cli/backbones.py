"""``fedhar backbones``: list backbones and pre-fill the cache (e.g. in CI, or on a device before deployment)."""

from __future__ import annotations

import argparse

from fedhar.cli.common import console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbones", help="list backbones or fetch them into the cache")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("names", nargs="*", help="named backbones to fetch (default: all named)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fedhar.model.backbones import NAMED, TINY, offline_ready, prepare_named
    from fedhar.errors import BackboneError

    if args.action == "list" and args.names:
        raise BackboneError(f"`fedhar backbones list` takes no names (got {args.names}); to fetch: "
                            f"fedhar backbones fetch {' '.join(args.names)}")  # fmt: skip
    if args.action == "list":
        for name, src in NAMED.items():
            state = "cached" if offline_ready(name) else "not cached"
            console.print(f"{name:14s} pretrained  {src.requirement:28s} {src.license:11s} {state}")
        for name in TINY:
            console.print(f"{name:14s} UNTRAINED   random init, for tests only")
        console.print("any Hugging Face hub id or local model folder also works (offline: local folders only)")
        return 0
    names = args.names or list(NAMED)
    for name in names:
        if name not in NAMED:
            raise BackboneError(f"`{name}` is not a named backbone; named: {sorted(NAMED)}")
        path = prepare_named(name)
        console.print(f"{name}: ready in {path} (offline ready: {offline_ready(name)})")
    return 0
