"""Core issue benchmark on HAPT: LLM+LoRA vs baselines, with parameters, time, throughput and memory.

    python simulations/core_benchmark.py --out runs/bench-core            # all five models
    python simulations/core_benchmark.py --out runs/bench-core --only a,c  # a subset
    python simulations/core_benchmark.py ... train.epochs=5               # extra overrides for every model

Writes core_benchmark.{json,csv,md} and core_benchmark.png (macro-F1 vs trainable parameters) into
--out, and every model's own run folder below it. Re-running skips variants finished with the same
settings, and stops on one finished with others.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_common import load_existing, measured_before, plot_f1_vs_params, row, run_variant, save_index, write_table

MODELS = {
    "a": ("smollm2-lora", ["model.backbone=smollm2-135m", "model.finetune=lora"]),
    "b": ("minilm-lora", ["model.backbone=minilm-l6", "model.finetune=lora", "model.num_layers=null"]),
    "c": ("deepconvlstm", ["model.kind=deepconvlstm"]),
    "d": ("transformer", ["model.kind=transformer", "model.hidden=128", "model.depth=4", "model.heads=4"]),
    "e": ("smollm2-full", ["model.backbone=smollm2-135m", "model.finetune=full", "train.lr=1e-4"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench-core"))
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--only", default=",".join(MODELS), help="comma-separated subset, e.g. a,c")
    p.add_argument("overrides", nargs="*", help="overrides applied to every model")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {m["variant"]: m for m in load_existing(args.out, "core_benchmark")}
    for key in args.only.split(","):
        if key not in MODELS:
            raise SystemExit(f"unknown model `{key}`; choose from {list(MODELS)}")
        name, overrides = MODELS[key]
        if measured_before(results, name, args.config, [*overrides, *args.overrides]):
            continue
        results[name] = run_variant(args.config, name, args.out, [*overrides, *args.overrides])
        save_index(results, args.out / "core_benchmark.json")
    rows = [row(m) for m in results.values()]
    write_table(rows, args.out, "core_benchmark")
    plot_f1_vs_params(rows, args.out / "core_benchmark.png", "HAPT test subjects 27-30")


if __name__ == "__main__":
    main()
