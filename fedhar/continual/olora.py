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

import math

import numpy as np
import torch
from torch import nn

from fedhar.model import stacked_adapters
from fedhar.model.stacked_adapters import PAST_FILE, lora_names, past_name, past_spec, stages_in  # noqa: F401
from fedhar.training.loop import Regularizer

PAST_ADAPTERS = "continual.past_adapters"  # train / evaluate message record: the frozen earlier adapters


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


def attach(model: nn.Module, past: dict[str, np.ndarray] | None) -> None:
    """Make the model's frozen adapters exactly ``past`` (``stacked_adapters.attach``), after checking their
    names, shapes and dtypes against the model's trainable LoRA tensors."""
    from fedhar.model.state import check_state, expected_spec

    if past and stacked_adapters.peft_of(model) is not None:
        check_state(past_spec(expected_spec(model), stages_in(past)), past, where="the past adapters")
    stacked_adapters.attach(model, past)


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
