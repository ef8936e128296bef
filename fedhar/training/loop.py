"""The one local-training loop: centralized training, Flower clients and benchmarks all call ``fit``.

AdamW on the trainable tensors only, linear warmup then cosine decay, gradient clipping,
early stopping on validation macro-F1 (the best epoch's trainable state is restored), seeded
shuffling, dropout; optional augmentation of the raw training windows and an exponential moving
average of the weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedhar.config import TrainConfig
from fedhar.data.recording import natural_key
from fedhar.data.windows import META_FIELDS, WindowSet
from fedhar.errors import ConfigError
from fedhar.metrics import classification_metrics
from fedhar.model.har_model import predict_logits
from fedhar.model.state import get_trainable_state, set_trainable_state
from fedhar.training.augment import augment_batch

#: extra loss term computed from the model (FedProx's proximal term, continual regularisers)
Regularizer = Callable[[nn.Module], torch.Tensor]


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one record per epoch
    best_epoch: int = 0
    best_val_macro_f1: float | None = None
    train_seconds: float = 0.0
    windows_seen: int = 0
    steps: int = 0
    stopped_early: bool = False

    @property
    def windows_per_s(self) -> float:
        return self.windows_seen / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def final_train_loss(self) -> float:
        return self.history[-1]["train_loss"] if self.history else float("nan")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup to 1, then cosine decay to 0 (``cosine``) or flat (``constant``)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def fit(
    model: nn.Module,
    train: WindowSet,
    val: WindowSet | None,
    cfg: TrainConfig,
    seed: int = 0,
    *,
    regularizer: Regularizer | None = None,
    progress: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train the trainable tensors of ``model`` on ``train``; early-stop on ``val`` macro-F1 when given."""
    if len(train) == 0:
        raise ConfigError("no training windows: check the split and class selection")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    augment_rng = torch.Generator().manual_seed(seed)  # its own stream: augmenting leaves shuffling alone
    mixup_rng = np.random.default_rng([seed, 1])  # and mixup its own, so turning it on changes nothing else
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_fraction * total)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    x_all, y_all = train.x, train.y
    result = FitResult()
    best_state, best_f1, waited, step = None, -1.0, 0, 0
    ema = WeightAverage(params, cfg.ema_decay) if cfg.ema_decay > 0 else None

    with _progress_bar(progress, cfg.epochs * steps_per_epoch) as bar:  # stopped on errors and Ctrl-C too
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            order = rng.permutation(len(train))
            losses, correct, seen = [], 0, 0
            t0 = time.perf_counter()
            for b in range(steps_per_epoch):
                idx = np.sort(order[b * cfg.batch_size : (b + 1) * cfg.batch_size])
                xb = augment_batch(torch.from_numpy(x_all[idx]), train.layout, cfg.augment, augment_rng)
                xb = xb.to(device, non_blocking=True)
                yb = torch.from_numpy(y_all[idx]).to(device, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, total, warmup, cfg.schedule)
                if cfg.augment.mixup_alpha > 0:  # each window blended with another of the batch, labels alike
                    share = float(mixup_rng.beta(cfg.augment.mixup_alpha, cfg.augment.mixup_alpha))
                    partner = torch.from_numpy(mixup_rng.permutation(len(idx))).to(device)
                    logits = model(share * xb + (1 - share) * xb[partner])
                    loss = share * loss_fn(logits, yb) + (1 - share) * loss_fn(logits, yb[partner])
                else:
                    logits = model(xb)
                    loss = loss_fn(logits, yb)
                if regularizer is not None:
                    loss = loss + regularizer(model)
                if not torch.isfinite(loss):  # one NaN step poisons every weight after it
                    raise ConfigError(f"training diverged at epoch {epoch}, step {step + 1} (loss {loss.item()}): "
                                      "lower train.lr or set train.grad_clip > 0")  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                if ema is not None:
                    ema.update(step)
                step += 1
                losses.append(loss.item())
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
                if bar is not None:
                    bar[0].update(bar[1], advance=1, description=f"epoch {epoch}/{cfg.epochs} loss {losses[-1]:.3f}")
            seconds = time.perf_counter() - t0
            result.train_seconds += seconds
            result.windows_seen += seen
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "train_accuracy": correct / max(1, seen),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 3),
                "windows_per_s": round(seen / seconds, 2) if seconds > 0 else 0.0,
            }
            if val is not None and len(val):
                with ema.swapped_in() if ema is not None else contextlib.nullcontext():
                    m = evaluate(model, val, cfg.eval_batch_size)
                    record.update(val_loss=m["loss"], val_accuracy=m["accuracy"], val_macro_f1=m["macro_f1"])
                    if m["macro_f1"] > best_f1:
                        best_f1, waited, result.best_epoch = m["macro_f1"], 0, epoch
                        best_state = get_trainable_state(model)
                    else:
                        waited += 1
            result.history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if val is not None and len(val) and cfg.patience and waited >= cfg.patience:
                result.stopped_early = True
                break
    result.steps = step
    if best_state is not None:
        set_trainable_state(model, best_state, where="best epoch")
        result.best_val_macro_f1 = best_f1
    else:
        result.best_epoch = len(result.history)
        if ema is not None:
            ema.copy_to_params()
    return result


class WeightAverage:
    """Exponential moving average of the trainable tensors, the weights that get evaluated and kept.

    On two validation subjects the score of the raw weights swings by several points from one
    epoch to the next (the SITTING/STANDING boundary moves); the average moves slowly, so early
    stopping picks a model rather than a lucky step. The decay ramps up from 0.1
    (``min(decay, (1 + step) / (10 + step))``) so the random initial weights wash out quickly.
    """

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for avg, p in zip(self.shadow, self.params):
            avg.mul_(d).add_(p.detach(), alpha=1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for avg, p in zip(self.shadow, self.params):
            p.copy_(avg)

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights inside the block, the training weights back after it."""
        backup = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for saved, p in zip(backup, self.params):
                    p.copy_(saved)


def evaluate(model: nn.Module, ws: WindowSet, batch_size: int = 256, by: str | None = None) -> dict:
    """Loss and classification metrics of ``model`` on ``ws``.

    ``by`` (a window tag: subject, device, ...) adds ``by_<tag>``: the same metrics per value, from
    the same forward pass -- which subject a pooled score loses on.
    """
    return metrics_from_logits(predict_logits(model, ws.x, batch_size), ws, by)


def metrics_from_logits(logits: np.ndarray, ws: WindowSet, by: str | None = None) -> dict:
    """What :func:`evaluate` reports, from logits already computed for ``ws`` (one forward pass, several uses)."""
    if by is not None and by not in META_FIELDS:
        raise ConfigError(f"cannot group by `{by}`; window tags: {list(META_FIELDS)}")
    metrics = _metrics(logits, ws.y, ws.label_names)
    if by is not None:
        values = getattr(ws, by)
        metrics[f"by_{by}"] = {v: _metrics(logits[values == v], ws.y[values == v], ws.label_names)
                               for v in sorted(set(values.tolist()), key=natural_key)}  # fmt: skip
    return metrics


def _metrics(logits: np.ndarray, y: np.ndarray, label_names: list[str]) -> dict:
    metrics = classification_metrics(y, logits.argmax(axis=1), label_names)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    metrics["loss"] = float(-logp[np.arange(len(y)), y].mean())
    return metrics


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[tuple | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:  # fmt: skip
        yield bar, bar.add_task("training", total=total)
