"""CPU cost of model settings: training and inference windows/s, measured on synthetic windows.

The sweep's own windows/s figures come from whichever machine (and load) ran each variant; this
times the same settings back to back in one process, after a warm-up, so they compare.

    python simulations/throughput.py --out runs/throughput                   # the sweep's settings
    python simulations/throughput.py --out runs/throughput --steps 30 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from run_inputs import provenance
import torch

from fedhar.config import LoraConfig, ModelConfig
from fedhar.data.preprocess import Normalizer
from fedhar.data.recording import IMU6
from fedhar.model.backbones import load_backbone
from fedhar.model.har_model import DataSpec, build_model, parameter_counts, predict_logits
from fedhar.results.run import write_json_atomic

SETTINGS = {
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


def measure(cfg: ModelConfig, spec: DataSpec, backbone, steps: int, batch: int) -> dict:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/throughput"))
    p.add_argument("--backbone", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(IMU6, 128, 50.0, [f"c{i}" for i in range(6)], Normalizer.identity(6))
    rows = []
    for name, fields in SETTINGS.items():
        cfg = ModelConfig(backbone=args.backbone, **fields)
        backbone = load_backbone(args.backbone, cfg.num_layers)  # fresh: LoRA is injected into the module
        row = {"setting": name, **measure(cfg, spec, backbone, args.steps, args.batch)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = {"threads": args.threads, "batch": args.batch, "steps": args.steps, "torch": torch.__version__}
    write_json_atomic(args.out / "throughput.json", {"settings": info, "rows": rows, **provenance()})
    lines = ["| setting | trainable | total | train windows/s | inference windows/s |", "|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['trainable']:,} | {r['total']:,} | {r['train_windows_per_s']} | "
              f"{r['inference_windows_per_s']} |" for r in rows]  # fmt: skip
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
