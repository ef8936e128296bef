"""The client side of a round: describe local data, train on it, score it. Used by ``clients/app.py``.

A client keeps no state between messages: every message carries the experiment config, the
round's stage, learning rate and seed, and the global trainable tensors. What a process does
keep is its model: the frozen backbone is loaded once per process (per Ray worker) and the
model around it built once; each message only overwrites the trainable tensors and the
input normalisation. Only trainable tensors cross the wire, in both directions.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedhar import posthoc
from fedhar.config import ExperimentConfig, TrainConfig
from fedhar.continual import olora
from fedhar.continual.regularize import (ANCHOR, FISHER_REPLY, IMPORTANCE, anchor_penalty, fisher_diagonal,
                                        importance_spec, product_importance)  # fmt: skip
from fedhar.data.preprocess import Normalizer
from fedhar.data.windows import WindowSet
from fedhar.errors import CheckpointError
from fedhar.federated.data import ClientData, client_data
from fedhar.federated.records import RoundJob, record_to_state, state_to_record
from fedhar.model.har_model import DataSpec, HARNet, build_model, predict_logits
from fedhar.model.state import expected_spec, get_trainable_state, set_trainable_state
from fedhar.training.loop import Regularizer, evaluate, fit, metrics_from_logits

#: the process's model: (key, model). One entry: a new model layout replaces the old one, because
#: peft injects LoRA layers into the backbone in place, so one loaded backbone serves one layout.
_MODEL: list[tuple[str, HARNet]] = []

MESSAGE_DESCRIBE = "query.describe"
POSTHOC_STATISTICS = "posthoc-statistics"  # the describe reply's record of the post-hoc adapter's statistics
NODE_THREADS = "threads"  # optional node config: torch threads for local training on this node


def process_model(cfg: ExperimentConfig, sample: WindowSet, normalizer: Normalizer | None) -> HARNet:
    """This process's model for ``cfg`` (built, and its backbone loaded, on first use only)."""
    key = json.dumps({
        "model": dataclasses.asdict(cfg.model), "seed": cfg.seed, "channels": list(sample.layout.channels),
        "window": sample.window_len, "rate": sample.sample_rate, "labels": list(sample.label_names),
    }, sort_keys=True)  # fmt: skip
    if not _MODEL or _MODEL[0][0] != key:
        _MODEL.clear()
        spec = DataSpec(sample.layout, sample.window_len, sample.sample_rate, list(sample.label_names),
                        Normalizer.identity(sample.num_channels))  # fmt: skip
        _MODEL.append((key, build_model(cfg.model, spec, cfg.seed)))
    model = _MODEL[0][1]
    model.set_normalizer(normalizer or Normalizer.identity(sample.num_channels))
    return model


def local_train_config(cfg: ExperimentConfig, lr: float) -> TrainConfig:
    """E local epochs at the round's learning rate: constant within the round (the schedule runs across rounds).

    No weight average (``ema_decay``) on a client: over one short local round it would only damp
    the update the client sends; aggregation across clients and rounds already averages.
    """
    threads = cfg.train.num_threads or max(1, int(cfg.federated.cpus_per_client))
    return dataclasses.replace(cfg.train, epochs=cfg.federated.local_epochs, lr=lr, schedule="constant",
                               warmup_fraction=0.0, patience=0, num_threads=threads, ema_decay=0.0)  # fmt: skip


def proximal_term(model: torch.nn.Module, global_state: dict[str, np.ndarray], mu: float) -> Regularizer:
    """FedProx: ``mu/2 · ||w − w_global||²`` over the trainable tensors."""
    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    anchors = [(params[n], torch.from_numpy(a).to(device)) for n, a in global_state.items()]

    def term(_: torch.nn.Module) -> torch.Tensor:
        return 0.5 * mu * sum(((p - g) ** 2).sum() for p, g in anchors)

    return term


def moments(ws: WindowSet) -> dict[str, np.ndarray]:
    """Per-channel sums and sums of squares (float64): all the server needs to fit the normaliser."""
    x = ws.x.astype(np.float64)
    return {"sum": x.sum(axis=(0, 2)), "sum_sq": (x**2).sum(axis=(0, 2))}


def train_client(job: RoundJob, data: ClientData, global_state: dict[str, np.ndarray],
                 anchor: dict[str, np.ndarray] | None = None,
                 importance: dict[str, np.ndarray] | None = None,
                 past: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:  # fmt: skip
    """Train E local epochs from the global state; returns (new trainable state, metrics).

    ``anchor`` (continual ``l2`` / ``ewc``): the previous stage's global tensors, pulled toward with weights
    ``importance`` (ewc's Fisher; None: 1) at ``continual.reg_strength``. ``past`` (``olora``): the earlier
    stages' frozen adapters, active in the forward pass, the new one kept orthogonal to them."""
    model = process_model(job.cfg, data.train, job.normalizer)
    olora.attach(model, past)
    set_trainable_state(model, global_state, where="the server's global state")
    mu = job.proximal_mu  # FedProx: sent by the strategy with every train message
    terms = [proximal_term(model, global_state, mu)] if mu > 0 else []
    if anchor is not None and job.cfg.continual is not None:
        terms.append(anchor_penalty(model, anchor, importance, job.cfg.continual.reg_strength))
    if past and job.cfg.continual is not None:  # olora: keep the new adapter's A orthogonal to the earlier ones
        ortho = olora.orthogonality_penalty(model, job.cfg.continual.reg_strength)
        terms += [ortho] if ortho is not None else []
    regularizer = (lambda m: sum(t(m) for t in terms)) if terms else None
    result = fit(model, data.train, None, local_train_config(job.cfg, job.lr), job.seed, regularizer=regularizer)
    metrics = {
        "train_loss": result.final_train_loss,
        "train_accuracy": result.history[-1]["train_accuracy"],
        "train_seconds": result.train_seconds,
        "steps": result.steps,
    }
    if data.val is not None:
        m = evaluate(model, data.val, job.cfg.train.eval_batch_size)
        metrics.update(local_val_accuracy=m["accuracy"], local_val_macro_f1=m["macro_f1"], local_val_loss=m["loss"])
    return get_trainable_state(model), metrics


def evaluate_client(job: RoundJob, data: ClientData, global_state: dict[str, np.ndarray],
                    past: dict[str, np.ndarray] | None = None) -> dict:  # fmt: skip
    """Score the global state (with ``olora``'s ``past`` adapters) on the client's local held-out windows; with
    the job's post-hoc adapter, also after the client applies it to those windows (``<tag>_*``)."""
    model = process_model(job.cfg, data.train, job.normalizer)
    olora.attach(model, past)
    set_trainable_state(model, global_state, where="the server's global state")
    logits = predict_logits(model, data.val.x, job.cfg.train.eval_batch_size)
    m = metrics_from_logits(logits, data.val)
    out = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "loss": m["loss"]}
    if job.posthoc is not None:
        adapter = posthoc.from_record(job.posthoc, "the server's post-hoc adapter")
        adapted = adapter.score(data.val, logits.argmax(axis=1))
        out.update({f"{adapter.tag}_{k}": adapted[k] for k in ("accuracy", "macro_f1")})
    return out


# ---- Flower message handlers (registered by clients/app.py) ------------------------------


def _reply(message: Message, name: str, num_examples: int, metrics: dict, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({
        "client": ConfigRecord({"name": name}),
        "metrics": MetricRecord({"num-examples": int(num_examples), **{k: float(v) for k, v in metrics.items()}}),
    })  # fmt: skip
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content, reply_to=message)


def _job_and_data(message: Message, context: Context) -> tuple[RoundJob, ClientData | None]:
    job = RoundJob.from_record(message.content["config"])
    return job, client_data(job.cfg, dict(context.node_config), job.stage)


def handle_describe(message: Message, context: Context) -> Message:
    """Setup query: the client's name, window count, per-channel moments (for the global normaliser) and,
    with ``train.posthoc``, the statistics the server fits the post-hoc adapter from."""
    job, data = _job_and_data(message, context)
    if data is None:
        return _reply(message, f"node-{context.node_id}", 0, {})
    stats = {}
    if job.cfg.data.normalize:
        stats = {"num-values": float(data.train.x.shape[0] * data.train.x.shape[2])}
    reply = _reply(message, data.name, len(data.train), stats)
    if job.cfg.data.normalize:
        reply.content["moments"] = state_to_record(moments(data.train))
    if (posthoc_config := posthoc.configured(job.cfg)) is not None:  # sums over the client's windows, not windows
        reply.content[POSTHOC_STATISTICS] = state_to_record(posthoc_config.statistics(data.train))
    return reply


def _global_state(message: Message, job: RoundJob, data: ClientData) -> dict[str, np.ndarray]:
    model = process_model(job.cfg, data.train, job.normalizer)
    return record_to_state(message.content["arrays"], expected_spec(model), where="the server's message")


def handle_train(message: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    job, data = _job_and_data(message, context)
    if data is None:  # holds no data at this stage: sits the round out
        return _reply(message, f"node-{context.node_id}", 0, {})
    if NODE_THREADS in context.node_config:  # a device knows its own cores (the job's config is this message's copy)
        job.cfg.train.num_threads = int(context.node_config[NODE_THREADS])
    global_state = _global_state(message, job, data)
    anchor, importance = _continual_records(message, job, data)
    fisher = None
    if job.fisher_windows:  # ewc: the Fisher of the received global model on this client's windows, before training
        model = process_model(job.cfg, data.train, job.normalizer)
        olora.attach(model, None)  # the process's model may hold an earlier olora run's adapters
        set_trainable_state(model, global_state, where="the server's global state")
        fisher = fisher_diagonal(model, data.train, job.fisher_windows, job.seed, product=product_importance(job.cfg))
    extra = {"anchor": anchor, "importance": importance} if anchor is not None else {}
    if (past := _past_adapters(message, job, data)) is not None:  # olora
        extra["past"] = past
    state, metrics = train_client(job, data, global_state, **extra)
    arrays = state_to_record(state)
    metrics["client_seconds"] = time.perf_counter() - t0  # the whole handler: decoding, training, encoding
    reply = _reply(message, data.name, len(data.train), metrics, arrays)
    if fisher is not None:
        reply.content[FISHER_REPLY] = state_to_record(fisher)
    return reply


def _continual_records(message: Message, job: RoundJob, data: ClientData) -> tuple[dict | None, dict | None]:
    """The previous stage's global tensors and their importance, when the server sent them (l2 / ewc; with
    ``ewc_importance: product`` the importance holds each LoRA layer's ``<layer>.delta_w`` instead of A and B)."""
    if ANCHOR not in message.content:
        return None, None
    model = process_model(job.cfg, data.train, job.normalizer)
    anchor = record_to_state(message.content[ANCHOR], expected_spec(model), where="the server's continual anchor")
    importance = None
    if IMPORTANCE in message.content:
        importance = record_to_state(message.content[IMPORTANCE], importance_spec(model, product_importance(job.cfg)),
                                     where="the server's continual importance")  # fmt: skip
    return anchor, importance


def _past_adapters(message: Message, job: RoundJob, data: ClientData) -> dict[str, np.ndarray] | None:
    """olora: the earlier stages' frozen adapters the server sent, checked against this stage (stage s: 0..s-1)."""
    method = job.cfg.continual.method if job.cfg.continual is not None else "naive"
    if method != "olora" or job.stage == 0:
        if olora.PAST_ADAPTERS in message.content:
            raise CheckpointError(f"the server sent past adapters in stage {job.stage} of a `{method}` run; server "
                                  "and client versions differ")  # fmt: skip
        return None
    if olora.PAST_ADAPTERS not in message.content:
        raise CheckpointError(f"olora in stage {job.stage} needs the earlier stages' adapters and the server's "
                              "message carries none; server and client versions differ")  # fmt: skip
    spec = olora.past_spec(expected_spec(process_model(job.cfg, data.train, job.normalizer)), job.stage)
    return record_to_state(message.content[olora.PAST_ADAPTERS], spec, where="the server's past adapters")


def handle_evaluate(message: Message, context: Context) -> Message:
    job, data = _job_and_data(message, context)
    if data is None or data.val is None:
        return _reply(message, data.name if data else f"node-{context.node_id}", 0, {})
    past = _past_adapters(message, job, data)
    metrics = evaluate_client(job, data, _global_state(message, job, data), **({"past": past} if past else {}))
    return _reply(message, data.name, len(data.val), metrics)


def client_side_dp_mod(message: Message, context: Context, call_next) -> Message:
    """Client-side DP (``federated.dp.side: client``): where the server's train message carries a clipping norm,
    Flower's ``adaptiveclipping_mod`` clips the update to it on the device (and reports whether it had to, the
    bit adaptive clipping needs); every other message passes untouched."""
    from flwr.clientapp.mod import adaptiveclipping_mod
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    config = message.content.config_records.get("config") if message.metadata.message_type == "train" else None
    if config is None or KEY_CLIPPING_NORM not in config:
        return call_next(message, context)
    return adaptiveclipping_mod(message, context, call_next)
