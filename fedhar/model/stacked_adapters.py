"""Frozen LoRA adapters stacked beside the trained one: what a model whose earlier adapters were frozen needs.

A run that freezes its adapter at some point and trains a fresh one (``continual.method: olora``) ends with a
model of several peft adapters: ``default`` (trained) and ``stage0``, ``stage1``… (frozen, active in the forward
pass). The checkpoint keeps the frozen ones in ``PAST_FILE`` beside the trainable tensors; this module names
them and attaches them to a model, so loading a checkpoint needs nothing from the continual layer.
``attach`` does not check the tensors against the model: its callers do (``model.state.check_state``).
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch
from torch import nn

from fedhar.errors import CheckpointError, ConfigError

PAST_FILE = "past_adapters.safetensors"  # next to a checkpoint's trainable tensors: what its model needs too
CURRENT = "default"  # the adapter the current stage trains (peft's default name)
_LORA = re.compile(r"\.lora_([AB])\.default\.")
_PAST = re.compile(r"\.lora_[AB]\.stage(\d+)\.")


def adapter_name(stage: int) -> str:
    return f"stage{stage}"


def past_name(name: str, stage: int) -> str:
    """A ``default`` LoRA tensor's name as the frozen adapter of ``stage``."""
    return _LORA.sub(lambda m: f".lora_{m.group(1)}.{adapter_name(stage)}.", name, count=1)


def lora_names(names) -> list[str]:
    """The current adapter's A and B tensors among trainable tensor names."""
    return [n for n in names if _LORA.search(n)]


def past_spec(spec: dict, stages: int) -> dict:
    """What the past adapters of ``stages`` earlier stages must be, from the trainable spec (name → shape, dtype)."""
    return {past_name(n, k): spec[n] for k in range(stages) for n in lora_names(spec)}


def stages_in(past: dict[str, np.ndarray]) -> int:
    """How many earlier stages a past-adapter dict holds (their numbers must be 0..n-1)."""
    found = set()
    for name in past:
        m = _PAST.search(name)
        if m is None:
            raise CheckpointError(f"past adapter tensor {name} is not named lora_A/lora_B.stage<k>")
        found.add(int(m.group(1)))
    if found != set(range(len(found))):
        raise CheckpointError(f"past adapters are of stages {sorted(found)}, expected 0..{len(found) - 1}")
    return len(found)


def peft_of(model: nn.Module):
    from peft import PeftModel

    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, PeftModel) else None


def attach(model: nn.Module, past: dict[str, np.ndarray] | None) -> None:
    """Make the model's extra adapters exactly ``past`` (added, or removed when stale), frozen, and active with
    ``default``. The process-wide client model is reused across messages and runs, hence the sync."""
    past = past or {}
    peft_model = peft_of(model)
    if peft_model is None:
        if past:
            raise ConfigError("continual.method=olora needs a LoRA model (model.kind: llm, model.finetune: lora)")
        return
    want = [adapter_name(k) for k in range(stages_in(past))]
    have = [n for n in peft_model.peft_config if n != CURRENT]
    if not have and not want:
        return
    for name in have:
        if name not in want:
            peft_model.delete_adapter(name)
    for name in want:
        if name not in peft_model.peft_config:
            with torch.random.fork_rng(devices=[]):  # peft draws the new A: leave the training RNG alone
                peft_model.add_adapter(name, copy.deepcopy(peft_model.peft_config[CURRENT]))
    peft_model.base_model.set_adapter([CURRENT, *want])  # also marks every active adapter trainable...
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in past.items():
            params[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    for name, p in params.items():
        if _PAST.search(name):
            p.requires_grad_(False)  # ...so the past ones are frozen again here
    model.train(model.training)  # the new adapters' dropout follows the model's mode
