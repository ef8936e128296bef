"""O-LoRA (Wang et al. 2023) in a federation: a new LoRA adapter per stage, the earlier ones frozen.

The current stage always trains the peft adapter ``default``, so every trainable tensor keeps its name
(aggregation, checks and byte counts are those of plain LoRA). When stage ``s > 0`` begins, the server
copies the global ``default`` A/B into a frozen adapter ``stage{s-1}`` (a *past adapter*) and re-draws
``default`` as peft would initialise it (B = 0, so the model's output is unchanged at the boundary; A
kaiming-uniform, seeded from the run's seed and the stage). The past adapters travel with every train and
evaluate message of the later stages (``PAST_ADAPTERS``); a model gets them as extra peft adapters, frozen
and active in the forward pass. The local loss adds ``λ · Σ_modules Σ_k ||A_default · A_kᵀ||₁``, which pushes
the new adapter's input subspace away from the earlier stages' ones. Frontend and head stay shared and keep
training: O-LoRA protects the backbone adaptation only.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import torch
from torch import nn

from fedhar.errors import CheckpointError, ConfigError
from fedhar.training.loop import Regularizer

PAST_ADAPTERS = "continual.past_adapters"  # train / evaluate message record: the frozen earlier adapters
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


def freeze_current(global_state: dict[str, np.ndarray], stage: int) -> dict[str, np.ndarray]:
    """The global ``default`` adapter as the frozen adapter of ``stage`` (copies)."""
    return {past_name(n, stage): global_state[n].copy() for n in lora_names(global_state)}


def fresh_current(global_state: dict[str, np.ndarray], seed: int, stage: int) -> dict[str, np.ndarray]:
    """The global state with ``default`` re-drawn as peft initialises LoRA: B = 0 (the output is unchanged),
    A kaiming-uniform (a = √5), seeded from (seed, stage) so every run and resume draws the same."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stage, 0x0105A]).generate_state(1)[0]))
    out = dict(global_state)
    for name in lora_names(global_state):
        value = global_state[name]
        if ".lora_B." in name:
            out[name] = np.zeros_like(value)
        else:
            a = torch.empty(value.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
            out[name] = a.numpy().astype(value.dtype)
    return out


def _peft(model: nn.Module):
    from peft import PeftModel

    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, PeftModel) else None


def attach(model: nn.Module, past: dict[str, np.ndarray] | None) -> None:
    """Make the model's extra adapters exactly ``past`` (added, or removed when stale), frozen, and active with
    ``default``. The process-wide client model is reused across messages and runs, hence the sync."""
    past = past or {}
    peft_model = _peft(model)
    if peft_model is None:
        if past:
            raise ConfigError("continual.method=olora needs a LoRA model (model.kind: llm, model.finetune: lora)")
        return
    from fedhar.model.state import check_state, expected_spec

    stages = stages_in(past)
    check_state(past_spec(expected_spec(model), stages), past, where="the past adapters")
    want = [adapter_name(k) for k in range(stages)]
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


def orthogonality(a: torch.Tensor, past: list[torch.Tensor]) -> torch.Tensor:
    """``Σ_k ||A · A_kᵀ||₁``: the absolute overlap of A's rows with every earlier adapter's rows (r × r each)."""
    return sum(((a @ p.T).abs().sum() for p in past), a.new_zeros(()))


def orthogonality_penalty(model: nn.Module, strength: float) -> Regularizer | None:
    """``λ · Σ_modules orthogonality(A_default, earlier A's)`` over the model's attached past adapters; None when
    it has none (stage 0)."""
    params = dict(model.named_parameters())
    terms = []
    for name in lora_names(params):
        if ".lora_A." not in name:
            continue
        past, k = [], 0
        while (other := past_name(name, k)) in params:
            past.append(params[other].detach())
            k += 1
        if past:
            terms.append((params[name], past))
    if not terms:
        return None

    def penalty(_: nn.Module) -> torch.Tensor:
        return strength * sum(orthogonality(a, past) for a, past in terms)

    return penalty
