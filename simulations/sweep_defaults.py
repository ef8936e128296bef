"""The sweep behind the default model settings: backbone depth, LoRA rank and targets, tokens per window.

One factor at a time around a base setting (changing all at once would cost a full grid of CPU
hours); chosen on *validation* macro-F1 (subjects 25 26), never on the test subjects, with the
cost (windows/s, trainable parameters) beside it.

    python simulations/sweep_defaults.py --out runs/sweep train.epochs=10 train.patience=4 train.device=cpu

For the table in docs/benchmarks.md the depth variants ran on a lent GPU
(simulations/device/gpu_sweep.sh) and the others on the 2-core CPU; layers16, r32, all-linear
and mean-pool were not part of it (mean pooling was later compared over five seeds by
seed_study.py). Scores differ a little between devices (base: validation macro-F1 0.957 on the
CPU, 0.968 on an H100), so compare variants run on the same device; the CPU cost of each
variant is measured separately by simulations/throughput.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench_common import load_existing, measured_before, plot_f1_vs_params, row, run_variant, save_index, write_table

BASE = {"model.num_layers": "4", "model.lora.r": "8", "model.lora.alpha": "16",
        "model.lora.targets": "[q_proj, v_proj]", "model.tokens": "16", "model.pooling": "auto"}  # fmt: skip
VARIANTS = {
    "base": {},
    "layers2": {"model.num_layers": "2"},
    "layers4": {"model.num_layers": "4"},  # = base (run on the GPU with the other depths)
    "layers6": {"model.num_layers": "6"},
    "layers8": {"model.num_layers": "8"},
    "layers12": {"model.num_layers": "12"},
    "layers16": {"model.num_layers": "16"},
    "r4": {"model.lora.r": "4", "model.lora.alpha": "8"},
    "r16": {"model.lora.r": "16", "model.lora.alpha": "32"},
    "r32": {"model.lora.r": "32", "model.lora.alpha": "64"},
    "qkvo": {"model.lora.targets": "[q_proj, k_proj, v_proj, o_proj]"},
    "all-linear": {"model.lora.targets": "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"},
    "tokens8": {"model.tokens": "8"},
    "tokens32": {"model.tokens": "32"},
    "mean-pool": {"model.pooling": "mean"},
    "stats-token": {"model.stats_token": "true"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sweep"), help="where the sweep table and plot go")
    p.add_argument("--runs", type=Path, help="where each variant's run folder goes (default: --out)")
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated subset, e.g. base,r16")
    p.add_argument("overrides", nargs="*", help="overrides applied to every variant")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {m["variant"]: m for m in load_existing(args.out, "sweep")}
    for name in args.only.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant `{name}`; choose from {list(VARIANTS)}")
        setting = {**BASE, **VARIANTS[name]}
        overrides = [f"{k}={v}" for k, v in setting.items()] + args.overrides
        if measured_before(results, name, args.config, overrides):
            continue
        results[name] = run_variant(args.config, f"sweep-{name}", args.runs or args.out, overrides)
        results[name]["variant"] = name
        save_index(results, args.out / "sweep.json")
    rows = sorted((row(m) for m in results.values()), key=lambda r: -(r["best_val_macro_f1"] or 0))
    write_table(rows, args.out, "sweep")
    plot_f1_vs_params(rows, args.out / "sweep.png", "default sweep (HAPT)")


if __name__ == "__main__":
    main()
