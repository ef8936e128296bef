"""Regularisation against forgetting: ``l2`` and ``ewc`` (``continual.method``).

Both add ``λ/2 · Σ_i F_i (w_i − w*_i)²`` to a client's local loss, where ``w*`` are the global trainable
tensors at the end of the previous stage (the *anchor*) and ``λ = continual.reg_strength``:

* ``l2``: ``F = 1`` -- every trainable value is pulled back alike;
* ``ewc`` (Kirkpatrick et al. 2017): ``F`` is a diagonal Fisher estimate of how much each value mattered to
  the earlier stages. In a federation no party holds the earlier data, so it is estimated federatedly: in
  the last round of every stage each sampled client computes, before training, the empirical Fisher of the
  received global model on (at most ``continual.fisher_windows`` of) its own windows and sends it with its
  update; the server averages the clients' estimates weighted by their window counts, adds the new stage's
  estimate to the running sum of the earlier ones (online EWC without decay), and normalises the sum to mean
  1 so ``λ`` means the same as for ``l2``.

The anchor (and F) travel to the clients with every train message of the later stages: these methods cost
downlink bytes (reported per stage in ``continual.json``); the per-sample Fisher is approximated with
gradients of micro-batches of ``FISHER_BATCH`` windows (``n_b · g_b²`` summed over micro-batches), which
over-estimates it by the mean gradient's square, small near the end of a stage.

``continual.ewc_importance: product`` (ewc only) places the importance of every LoRA-wrapped layer on the
update the frozen layer actually sees, ``W = scaling · B·A`` (d_out × d_in), instead of on A and B apart: the
client's estimate for that layer is the diagonal Fisher of W, under the key ``<layer>.delta_w``, and the
penalty is ``λ/2 · Σ F_W ⊙ (scaling·B·A − scaling·B₀·A₀)²``. ``∂L/∂W`` is no parameter's gradient; it is
``Σ_tokens δᵀ x`` (δ: the gradient of the layer's output, x: the input of ``lora_A``, i.e. after dropout),
taken from hooks on peft's ``lora_A`` / ``lora_B`` (``∂L/∂(B·A·x) = scaling · δ``). Frontend, head and any
other trainable tensor keep the per-parameter Fisher and penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedhar.data.windows import WindowSet
from fedhar.training.loop import Regularizer

FISHER_BATCH = 16
ANCHOR = "continual-anchor"  # train message record: the previous stage's global tensors
IMPORTANCE = "continual-importance"  # train message record (ewc): the normalised Fisher
FISHER_REQUEST = "continual-fisher"  # train config key: estimate the Fisher before training, send it back
FISHER_REPLY = "importance"  # train reply record: the client's Fisher estimate
PRODUCT = ".delta_w"  # importance key of a LoRA layer's product W = scaling·B·A (ewc_importance: product)
ADAPTER = "default"  # the peft adapter that trains (olora's frozen ones are never in an ewc run)


@dataclass
class LoraLayer:
    """One LoRA-wrapped layer of the current adapter: its product's importance key, factors and scaling."""

    key: str  # <layer>.delta_w
    a_name: str
    b_name: str
    a: nn.Parameter  # [r, d_in]
    b: nn.Parameter  # [d_out, r]
    scaling: float
    module: nn.Module

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.b.shape[0]), int(self.a.shape[1])


def product_importance(cfg) -> bool:
    """Whether ``cfg`` puts ewc's importance of the LoRA layers on their product (``continual.ewc_importance``)."""
    cont = cfg.continual
    return cont is not None and cont.method == "ewc" and cont.ewc_importance == "product"


def lora_layers(model: nn.Module) -> list[LoraLayer]:
    """The model's peft LoRA layers of the training adapter whose A or B trains, in the model's order."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    out = []
    for name, module in model.named_modules():
        if isinstance(module, PeftLoraLayer) and ADAPTER in module.lora_A:
            a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
            if a.requires_grad or b.requires_grad:
                out.append(LoraLayer(name + PRODUCT, f"{name}.lora_A.{ADAPTER}.weight",
                                     f"{name}.lora_B.{ADAPTER}.weight", a, b, float(module.scaling[ADAPTER]),
                                     module))  # fmt: skip
    return out


def importance_spec(model: nn.Module, product: bool) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """What a Fisher estimate / importance of ``model`` holds (name → shape, dtype), in the model's order: the
    trainable tensors; with ``product`` each LoRA layer's A and B replaced by one ``<layer>.delta_w`` [d_out, d_in]."""
    from fedhar.model.state import expected_spec

    spec = expected_spec(model)
    if not product:
        return spec
    owner = {}
    for layer in lora_layers(model):
        owner[layer.a_name] = owner[layer.b_name] = layer
    out = {}
    for name, value in spec.items():
        if name in owner:
            out.setdefault(owner[name].key, (owner[name].shape, np.dtype("float32")))
        else:
            out[name] = value
    return out


def anchor_penalty(model: nn.Module, anchor: dict[str, np.ndarray], importance: dict[str, np.ndarray] | None,
                   strength: float) -> Regularizer:  # fmt: skip
    """``λ/2 · Σ F (w − anchor)²`` over the trainable tensors (F = 1 without ``importance``). Where ``importance``
    holds a LoRA layer's ``<layer>.delta_w``, that layer's A and B are pulled together instead:
    ``λ/2 · Σ F ⊙ (scaling·B·A − scaling·B₀·A₀)²`` with B₀, A₀ the anchor's (a frozen A: the model's own)."""
    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    products, covered = [], set()
    if importance is not None and any(k.endswith(PRODUCT) for k in importance):
        for layer in lora_layers(model):
            if layer.key not in importance:
                continue
            covered |= {layer.a_name, layer.b_name}
            a0 = anchor[layer.a_name] if layer.a_name in anchor else layer.a.detach().cpu().numpy()
            p0 = layer.scaling * (anchor[layer.b_name].astype(np.float64) @ a0.astype(np.float64))
            products.append((layer.a, layer.b, layer.scaling, torch.from_numpy(p0.astype(np.float32)).to(device),
                             torch.from_numpy(importance[layer.key]).to(device)))  # fmt: skip
    terms = []
    for name, value in anchor.items():
        if name in covered:
            continue
        weight = torch.from_numpy(importance[name]).to(device) if importance is not None else None
        terms.append((params[name], torch.from_numpy(value).to(device), weight))

    def penalty(_: nn.Module) -> torch.Tensor:
        total = sum(((p - a) ** 2 * w).sum() if w is not None else ((p - a) ** 2).sum() for p, a, w in terms)
        total = total + sum((w * (s * (b @ a) - p0) ** 2).sum() for a, b, s, p0, w in products)
        return 0.5 * strength * total

    return penalty


def product_gradients(layers: list[LoraLayer], grads: dict[str, torch.Tensor]) -> list:
    """Hooks that add ``∂L/∂W`` (W = scaling·B·A) of every layer to ``grads[key]`` during each backward pass:
    ``Σ_tokens δᵀ x`` with x the input of ``lora_A`` and ``scaling · δ`` the gradient of ``lora_B``'s output.
    Returns the hook handles (``.remove()`` them)."""
    handles = []
    for layer in layers:
        seen: dict[str, torch.Tensor] = {}

        def keep_input(_m, args, seen=seen):
            seen["x"] = args[0].detach()

        def on_output(_m, _args, out, seen=seen, layer=layer):
            if not out.requires_grad:
                return
            x = seen.pop("x")

            def add(g: torch.Tensor, x=x, layer=layer) -> None:
                dw = torch.einsum("...o,...i->oi", g.detach().to(x.dtype), x) / layer.scaling
                grads[layer.key] = grads[layer.key] + dw if layer.key in grads else dw

            out.register_hook(add)

        handles.append(layer.module.lora_A[ADAPTER].register_forward_pre_hook(keep_input))
        handles.append(layer.module.lora_B[ADAPTER].register_forward_hook(on_output))
    return handles


def fisher_diagonal(model: nn.Module, ws: WindowSet, max_windows: int, seed: int,
                    product: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """Empirical diagonal Fisher of the trainable tensors on (a seeded sample of) ``ws``: the mean over windows
    of the squared gradient of the log-likelihood of the true label (micro-batch approximation, see above).
    With ``product``, every LoRA layer's A and B are replaced by the Fisher of its W = scaling·B·A
    (``<layer>.delta_w``); the keys and their order are :func:`importance_spec`'s."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ws), min(max_windows, len(ws)), replace=False))
    layers = lora_layers(model) if product else []
    covered = {n for layer in layers for n in (layer.a_name, layer.b_name)}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n not in covered]
    sums = {n: torch.zeros_like(p) for n, p in named}
    sums.update({layer.key: torch.zeros(layer.shape, dtype=layer.a.dtype, device=layer.a.device) for layer in layers})
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model that is evaluated
    loss_fn = nn.CrossEntropyLoss()
    grads: dict[str, torch.Tensor] = {}
    handles = product_gradients(layers, grads)
    try:
        for start in range(0, len(idx), FISHER_BATCH):
            batch = idx[start : start + FISHER_BATCH]
            xb = torch.from_numpy(ws.x[batch]).to(device)
            yb = torch.from_numpy(ws.y[batch]).to(device)
            model.zero_grad(set_to_none=True)
            grads.clear()
            loss_fn(model(xb), yb).backward()
            for n, p in named:
                if p.grad is not None:
                    sums[n] += len(batch) * p.grad.detach() ** 2
            for key, g in grads.items():
                sums[key] += len(batch) * g**2
    finally:
        for handle in handles:
            handle.remove()
        grads.clear()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    order = importance_spec(model, product)
    return {n: (sums[n] / max(1, len(idx))).cpu().numpy().astype(np.float32) for n in order}


def merge_importance(estimates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray] | None:
    """The clients' Fisher estimates averaged with their window counts as weights."""
    total = sum(n for _, n in estimates)
    if not estimates or total <= 0:
        return None
    names = list(estimates[0][0])
    return {k: sum(f[k].astype(np.float64) * n for f, n in estimates) / total for k in names}


def normalised(importance: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scaled to mean 1 over every trainable value (λ then means what it means for l2)."""
    mean = float(np.mean(np.concatenate([v.ravel() for v in importance.values()])))
    scale = 1.0 / mean if mean > 0 else 1.0
    return {k: (v * scale).astype(np.float32) for k, v in importance.items()}
