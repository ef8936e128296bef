#!/usr/bin/env bash
# Seed-to-seed spread of the default HAPT model (configs/hapt.yaml) on a lent GPU machine: seeds in
# parallel, each one's metrics.json copied to $OUT as soon as it ends. Needs .device/ as gpu_sweep.sh.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD FEDHAR_CACHE=/tmp/fedhar-cache FEDHAR_WINDOW_CACHE=/tmp/fedhar-windows
common="model.backbone=.device/smollm2-16.gguf data.dataset=generic data.path=.device/hapt6c.npz train.device=cuda"
python3 -c "from fedhar.model.backbones import load_backbone; load_backbone('.device/smollm2-16.gguf', 4)"  # convert once
for seed in ${SEEDS:-1 2 3}; do
  ( python3 -m fedhar.cli.main train --config configs/hapt.yaml --quiet name=seed$seed output_dir=/tmp/seeds \
      seed=$seed $common > /tmp/seed$seed.log 2>&1 && cp /tmp/seeds/seed$seed/metrics.json "$OUT/seed$seed.json" ) &
done
wait
