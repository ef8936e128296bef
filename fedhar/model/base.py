"""What every fedhar classifier is built on: ``DataSpec`` (the data a model knows, stored in checkpoints)
and ``HARNet`` (the base module with input normalisation); the LLM model and the baselines both build on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fedhar.config import DataConfig, ModelConfig
from fedhar.data.preprocess import Normalizer
from fedhar.data.recording import SensorLayout
from fedhar.data.windows import WindowSet


@dataclass
class DataSpec:
    """What a model must know of its data: stored with every checkpoint so predict needs no dataset."""

    layout: SensorLayout
    window_len: int
    sample_rate: float
    label_names: list[str]
    normalizer: Normalizer
    # how windows were cut from recordings (data.overlap, label_rule, placement, ...), so that
    # `fedhar evaluate` cuts a dataset folder the same way; empty in checkpoints older than it
    windowing: dict = field(default_factory=dict)

    @classmethod
    def from_windows(cls, ws: WindowSet, normalize: bool = True, windowing: dict | None = None) -> "DataSpec":
        norm = Normalizer.fit(ws) if normalize else Normalizer.identity(ws.num_channels)
        return cls(ws.layout, ws.window_len, ws.sample_rate, list(ws.label_names), norm, dict(windowing or {}))

    def to_json(self) -> dict:
        return {
            "layout": self.layout.to_json(),
            "window_len": self.window_len,
            "sample_rate": self.sample_rate,
            "label_names": self.label_names,
            "normalizer": self.normalizer.to_json(),
            **({"windowing": self.windowing} if self.windowing else {}),
        }

    @classmethod
    def from_json(cls, d: dict) -> "DataSpec":
        return cls(
            SensorLayout.from_json(d["layout"]),
            int(d["window_len"]),
            float(d["sample_rate"]),
            list(d["label_names"]),
            Normalizer.from_json(d["normalizer"]),
            dict(d.get("windowing", {})),
        )


def windowing_record(cfg: DataConfig) -> dict:
    """The data settings that decide which windows a dataset folder yields (stored in DataSpec); the
    dataset's loader too, since its placement and options only mean something to that loader."""
    dataset = cfg.dataset
    if dataset == "auto" and cfg.path is not None:
        from fedhar.data.loaders import detect_layout

        dataset = detect_layout(cfg.path)
    return {"dataset": dataset, "overlap": cfg.overlap, "label_rule": cfg.label_rule, "placement": cfg.placement,
            "loader_options": dict(cfg.loader_options), "common_labels": cfg.common_labels,
            "label_map": cfg.label_map}  # fmt: skip


class HARNet(nn.Module):
    """Base of every fedhar classifier: input normalisation stored as buffers, so checkpoints take raw windows."""

    def __init__(self, model_cfg: ModelConfig, data: DataSpec):
        super().__init__()
        self.model_cfg = model_cfg
        self.data = data
        self.register_buffer("norm_mean", torch.from_numpy(data.normalizer.mean).view(1, -1, 1).clone())
        self.register_buffer("norm_std", torch.from_numpy(data.normalizer.std).view(1, -1, 1).clone())
        self.backbone_pretrained: bool | None = None  # None: the model has no backbone

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.norm_mean) / self.norm_std

    def set_normalizer(self, norm: Normalizer) -> None:
        self.data.normalizer = norm
        self.norm_mean.copy_(torch.from_numpy(norm.mean).view(1, -1, 1))
        self.norm_std.copy_(torch.from_numpy(norm.std).view(1, -1, 1))
