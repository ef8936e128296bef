"""Model comparison on HAPT: LLM + LoRA against the baselines, the sweep behind the default settings, their CPU
throughput; the seed study and seed ensembles (is a difference real?) are in :mod:`fedhar.benchmarks.seeds`.

    python simulations/models.py compare --out runs/bench-core            # the five models (docs/benchmarks.md)
    python simulations/models.py sweep --out runs/sweep train.epochs=10 train.patience=4 train.device=cpu
    python simulations/models.py seeds --out runs/seed-study --candidates base mixup --seeds 0 1 2 3 4
    python simulations/models.py ensemble --out runs/ensemble runs/seed-study/mixup-s{0,1,2,3,4}
    python simulations/models.py throughput --out runs/throughput
    python simulations/models.py STUDY --quick                             # every study, minutes

Settings: simulations/configs/models.yaml. Every `fedhar train` variant runs in a fresh process (peak RSS and
wall time per model); re-running skips variants finished with the same settings and stops on one finished
with others.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedhar.benchmarks.recipe import dispatch, parse
from fedhar.benchmarks.results import (load_existing, plot_f1_vs_params, save_index, train_row, write_json,
                                       write_markdown, write_train_table)  # fmt: skip
from fedhar.benchmarks.runner import measured_before, train_variant

# ---- compare: the core comparison ------------------------------------------------------------------------

MODELS = {
    "a": ("smollm2-lora", ["model.backbone=smollm2-135m", "model.finetune=lora"]),
    "b": ("minilm-lora", ["model.backbone=minilm-l6", "model.finetune=lora", "model.num_layers=null"]),
    "c": ("deepconvlstm", ["model.kind=deepconvlstm"]),
    "d": ("transformer", ["model.kind=transformer", "model.hidden=128", "model.depth=4", "model.heads=4"]),
    "e": ("smollm2-full", ["model.backbone=smollm2-135m", "model.finetune=full", "train.lr=1e-4"]),
}


def compare(argv: list[str] | None = None) -> None:
    """LLM + LoRA vs baselines (centralized): parameters, time, throughput and memory of each model.

    Writes core_benchmark.{json,csv,md} and core_benchmark.png (macro-F1 vs trainable parameters) into --out,
    and every model's own run folder below it."""
    p = argparse.ArgumentParser(prog="models.py compare", description=compare.__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/bench-core"))
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--only", default=",".join(MODELS), help="comma-separated subset, e.g. a,c")
    p.add_argument("overrides", nargs="*", help="overrides applied to every model")
    args = parse(p, argv, "models", "compare")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {m["variant"]: m for m in load_existing(args.out, "core_benchmark")}
    unknown = [key for key in args.only.split(",") if key not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model `{unknown[0]}`; choose from {list(MODELS)}")
    variants = {MODELS[key][0]: [*MODELS[key][1], *args.overrides] for key in args.only.split(",")}
    train_variants(variants, results, args.config, args.out, args.out / "core_benchmark.json")
    rows = [train_row(m) for m in results.values()]
    write_train_table(rows, args.out, "core_benchmark")
    plot_f1_vs_params(rows, args.out / "core_benchmark.png", "HAPT test subjects 27-30")


def train_variants(variants: dict[str, list[str]], results: dict, config: str, runs: Path, index: Path,
                   prefix: str = "") -> None:  # fmt: skip
    """Train each variant (name → overrides of ``config``) in a fresh process into ``runs/<prefix><name>``, unless
    ``results`` holds it measured with the same settings; the index is saved after each, so a cut run resumes."""
    for name, overrides in variants.items():
        if measured_before(results, name, config, overrides):
            continue
        results[name] = train_variant(config, prefix + name, runs, overrides)
        results[name]["variant"] = name
        save_index(results, index)


# ---- sweep: the default model settings -------------------------------------------------------------------

SWEEP_BASE = {"model.num_layers": "4", "model.lora.r": "8", "model.lora.alpha": "16",
              "model.lora.targets": "[q_proj, v_proj]", "model.tokens": "16", "model.pooling": "auto"}  # fmt: skip
SWEEP = {
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


def sweep(argv: list[str] | None = None) -> None:
    """The sweep behind the default model settings: backbone depth, LoRA rank and targets, tokens per window.

    One factor at a time around a base setting (a full grid would cost CPU days); chosen on *validation*
    macro-F1, never on the test subjects, with the cost (windows/s, trainable parameters) beside it. Writes
    sweep.{json,csv,md,png} into --out. The depth rows of docs/benchmarks.md ran on a lent GPU
    (simulations/device/gpu_sweep.sh); compare variants run on the same device."""
    p = argparse.ArgumentParser(prog="models.py sweep", description=sweep.__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/sweep"), help="where the sweep table and plot go")
    p.add_argument("--runs", type=Path, help="where each variant's run folder goes (default: --out)")
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--only", default=",".join(SWEEP), help="comma-separated subset, e.g. base,r16")
    p.add_argument("overrides", nargs="*", help="overrides applied to every variant")
    args = parse(p, argv, "models", "sweep")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {m["variant"]: m for m in load_existing(args.out, "sweep")}
    unknown = [name for name in args.only.split(",") if name not in SWEEP]
    if unknown:
        raise SystemExit(f"unknown variant `{unknown[0]}`; choose from {list(SWEEP)}")
    variants = {name: [f"{k}={v}" for k, v in {**SWEEP_BASE, **SWEEP[name]}.items()] + args.overrides
                for name in args.only.split(",")}  # fmt: skip
    train_variants(variants, results, args.config, args.runs or args.out, args.out / "sweep.json", prefix="sweep-")
    rows = sorted((train_row(m) for m in results.values()), key=lambda r: -(r["best_val_macro_f1"] or 0))
    write_train_table(rows, args.out, "sweep")
    plot_f1_vs_params(rows, args.out / "sweep.png", "default sweep (HAPT)")


# ---- throughput: CPU cost of the settings, back to back in one process -----------------------------------


def _throughput_settings() -> dict:
    from fedhar.config import LoraConfig

    return {
        "base (4 blocks, r8, q/v, 16 tokens)": dict(num_layers=4),
        "2 blocks": dict(num_layers=2),
        "6 blocks": dict(num_layers=6),
        "12 blocks": dict(num_layers=12),
        "r4": dict(num_layers=4, lora=LoraConfig(r=4, alpha=8)),
        "r16": dict(num_layers=4, lora=LoraConfig(r=16, alpha=32)),
        "q,k,v,o": dict(num_layers=4, lora=LoraConfig(targets=["q_proj", "k_proj", "v_proj", "o_proj"])),
        "8 tokens": dict(num_layers=4, tokens=8),
        "32 tokens": dict(num_layers=4, tokens=32),
        "full fine-tuning (4 blocks)": dict(num_layers=4, finetune="full"),
    }


def measure_throughput(cfg, spec, backbone, steps: int, batch: int) -> dict:
    """Training (forward + backward + AdamW step) and batched inference windows/s of one setting, after warm-up."""
    import numpy as np
    import torch

    from fedhar.model.har_model import build_model, parameter_counts, predict_logits

    model = build_model(cfg, spec, seed=0, backbone=backbone)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 6, 128)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 6, batch))
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train_wps = steps * batch / (time.perf_counter() - t0)
    xs = rng.standard_normal((steps * batch, 6, 128)).astype(np.float32)
    predict_logits(model, xs[:batch])
    t0 = time.perf_counter()
    predict_logits(model, xs, batch_size=256)
    infer_wps = len(xs) / (time.perf_counter() - t0)
    return {**parameter_counts(model), "train_windows_per_s": round(train_wps, 1),
            "inference_windows_per_s": round(infer_wps, 1)}  # fmt: skip


def throughput(argv: list[str] | None = None) -> None:
    """CPU cost of model settings: training and inference windows/s, measured on synthetic windows.

    The sweep's own windows/s come from whichever machine (and load) ran each variant; this times the same
    settings back to back in one process, after a warm-up, so they compare. Writes throughput.{json,csv,md}."""
    import torch

    p = argparse.ArgumentParser(prog="models.py throughput", description=throughput.__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/throughput"))
    p.add_argument("--backbone", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--only", nargs="+", metavar="SETTING", help='a subset of the settings (default: all), e.g. "2 blocks" r4')
    args = parse(p, argv, "models", "throughput")
    from fedhar.config import ModelConfig
    from fedhar.data.preprocess import Normalizer
    from fedhar.data.recording import IMU6
    from fedhar.model.backbones import load_backbone
    from fedhar.model.har_model import DataSpec

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(IMU6, 128, 50.0, [f"c{i}" for i in range(6)], Normalizer.identity(6))
    settings = _throughput_settings()
    chosen = args.only or list(settings)
    for name in chosen:
        if name not in settings:
            raise SystemExit(f"unknown setting `{name}`; choose from {list(settings)}")
    rows = []
    for name in chosen:
        cfg = ModelConfig(backbone=args.backbone, **settings[name])
        backbone = load_backbone(args.backbone, cfg.num_layers)  # fresh: LoRA is injected into the module
        row = {"setting": name, **measure_throughput(cfg, spec, backbone, args.steps, args.batch)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = {"threads": args.threads, "batch": args.batch, "steps": args.steps, "torch": torch.__version__}
    write_json(args.out / "throughput.json", {"settings": info, "rows": rows})
    from fedhar.benchmarks.results import write_csv

    write_csv(args.out / "throughput.csv", rows)
    shown = [{**r, "trainable": f"{r['trainable']:,}", "total": f"{r['total']:,}"} for r in rows]
    lines = write_markdown(args.out / "throughput.md", shown, ["setting", "trainable", "total", "train_windows_per_s",
                                                               "inference_windows_per_s"])  # fmt: skip
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    from fedhar.benchmarks import seeds

    dispatch({"compare": compare, "sweep": sweep, "seeds": seeds.seed_study, "ensemble": seeds.ensemble,
              "throughput": throughput}, argv, __doc__)  # fmt: skip
