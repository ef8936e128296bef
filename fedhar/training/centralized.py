"""Centralized training recipe: data → subject-disjoint split → model → the shared loop → results."""

from __future__ import annotations

import resource
import time

import torch

from fedhar import posthoc
from fedhar.config import ExperimentConfig
from fedhar.data.pipeline import split_windows
from fedhar.data.recording import natural_key
from fedhar.data.splits import low_label, low_label_per_subject
from fedhar.model.backbones import TINY as _TINY
from fedhar.model.har_model import DataSpec, build_model, parameter_counts, predict_logits, windowing_record
from fedhar.model.state import check_init_source, init_from_checkpoint, save_checkpoint
from fedhar.results.plots import plot_confusion_matrix, plot_learning_curves
from fedhar.results.run import RunDir
from fedhar.training.loop import fit, metrics_from_logits


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preflight(cfg: ExperimentConfig) -> None:
    """Fail on an unknown backbone, post-hoc adapter or missing data before any run folder is created."""
    from fedhar.data.loaders import check_data_path
    from fedhar.model.backbones import check_spec

    if cfg.model.kind == "llm":
        check_spec(cfg.model.backbone)
    posthoc.configured(cfg)
    check_data_path(cfg.data.dataset, cfg.data.path)
    if cfg.train.init_from is not None:  # transfer: the source checkpoint must be one, before anything starts
        cfg.train.init_from = str(check_init_source(cfg.train.init_from, cfg.model))


def train_centralized(cfg: ExperimentConfig, run: RunDir | None = None, progress: bool = True) -> dict:
    """Train one model as ``cfg`` says; returns (and, with ``run``, writes) its metrics and costs."""
    t_start = time.perf_counter()
    train, val, test = split_windows(cfg.data, cfg.seed)
    if cfg.data.labelled_per_class is not None or cfg.data.labelled_percent is not None:
        budget = low_label_per_subject if cfg.data.labelled_per_subject else low_label
        train = budget(train, cfg.seed, cfg.data.labelled_per_class, cfg.data.labelled_percent)
    adapter = None
    if (posthoc_config := posthoc.configured(cfg)) is not None:  # fitted before training: data that cannot costs no run
        posthoc_config.check(train.label_names)
        adapter = posthoc_config.fit(train)
    spec = DataSpec.from_windows(train, normalize=cfg.data.normalize, windowing=windowing_record(cfg.data))
    t_model = time.perf_counter()
    model = build_model(cfg.model, spec, cfg.seed)
    init_record = init_from_checkpoint(model, cfg.train.init_from) if cfg.train.init_from is not None else None
    build_s = time.perf_counter() - t_model
    counts = parameter_counts(model)
    on_epoch = None
    if run is not None:
        history: list[dict] = []

        def on_epoch(record: dict) -> None:  # per-epoch CSV survives a crash mid-run
            history.append(record)
            run.write_csv("epochs.csv", history)

    result = fit(model, train, val if len(val) else None, cfg.train, cfg.seed, progress=progress, on_epoch=on_epoch)
    logits = {role: predict_logits(model, part.x, cfg.train.eval_batch_size)
              for role, part in (("val", val), ("test", test)) if len(part)}  # fmt: skip
    test_metrics = metrics_from_logits(logits["test"], test) if "test" in logits else None
    val_metrics = metrics_from_logits(logits["val"], val) if "val" in logits else None
    summary = {
        "name": cfg.name,
        "model": cfg.model.kind if cfg.model.kind != "llm" else f"{cfg.model.backbone}+{cfg.model.finetune}",
        "synthetic_data": train.synthetic,
        "backbone_pretrained": model.backbone_pretrained,
        "parameters": counts,
        "trainable_percent": round(100 * counts["trainable"] / counts["total"], 3),
        "windows": {"train": len(train), "val": len(val), "test": len(test)},
        "subjects": {name: sorted(set(part.subject.tolist())) for name, part in
                     (("train", train), ("val", val), ("test", test))},  # fmt: skip
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "best_val_macro_f1": result.best_val_macro_f1,
        "test": test_metrics,
        "val": val_metrics,
        "train_seconds": round(result.train_seconds, 2),
        "train_windows_per_s": round(result.windows_per_s, 2),
        "model_build_seconds": round(build_s, 2),
        "wall_seconds": round(time.perf_counter() - t_start, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": _device_name(next(model.parameters()).device),  # figures differ a little between devices
    }
    if init_record is not None:  # transfer: where the carried tensors came from
        summary["init_from"] = init_record
    extra = {"run": cfg.name, "seed": cfg.seed, "synthetic_data": train.synthetic,  # evaluate flags figures on these
             "train_subjects": sorted(set(train.subject.tolist()), key=natural_key)}  # fmt: skip
    if adapter is not None:  # a client-side step: reported beside the per-window figures
        summary[f"client_{adapter.tag}"] = {role: adapter.score(part, logits[role].argmax(axis=1))
                                            for role, part in (("val", val), ("test", test))
                                            if role in logits}  # fmt: skip
        summary["posthoc"] = extra["posthoc"] = adapter.record()
    if model.backbone_pretrained is False:
        summary["warning"] = ("randomly initialised backbone (model.pretrained=false): the no-pretraining control"
                              if cfg.model.pretrained is False and cfg.model.backbone not in _TINY else
                              "UNTRAINED test backbone: these figures say nothing about pretrained models")  # fmt: skip
    if train.synthetic:
        summary["data_note"] = "SYNTHETIC data: not a real-data result"
    if run is not None:
        if init_record is not None:
            run.update_json("run.json", init_from=init_record)
            extra["init_from"] = init_record["checkpoint"]
        run.write_json("metrics.json", summary)
        plot_learning_curves(result.history, run.file("learning_curves.png"), title=summary["model"])
        if test_metrics:
            plot_confusion_matrix(test_metrics["confusion_matrix"], spec.label_names, run.file("confusion_matrix.png"),
                                  title=f"{summary['model']}: test subjects")  # fmt: skip
        save_checkpoint(model, run.file("checkpoint"), extra=extra)
    return summary


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
