"""Baselines trained through the same loop, so "fewer trainable parameters" is measured, not claimed."""

from __future__ import annotations

import torch
from torch import nn

from fedhar.config import ModelConfig
from fedhar.model.base import DataSpec, HARNet


class DeepConvLSTM(HARNet):
    """Ordóñez & Roggen (2016): four temporal convolutions (64 filters, k=5) then two LSTM layers."""

    def __init__(self, model_cfg: ModelConfig, data: DataSpec, filters: int = 64, kernel_size: int = 5):
        super().__init__(model_cfg, data)
        c_in = data.layout.num_channels
        convs: list[nn.Module] = []
        for _ in range(4):
            convs += [nn.Conv1d(c_in, filters, kernel_size), nn.ReLU()]
            c_in = filters
        self.convs = nn.Sequential(*convs)
        self.dropout = nn.Dropout(model_cfg.dropout)
        self.lstm = nn.LSTM(filters, model_cfg.hidden, num_layers=2, batch_first=True, dropout=model_cfg.dropout)
        self.head = nn.Linear(model_cfg.hidden, len(data.label_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(self.normalize(x)).transpose(1, 2)  # [B, T', F]
        out, _ = self.lstm(self.dropout(h))
        return self.head(out[:, -1])


class ScratchTransformer(HARNet):
    """A small Transformer encoder trained from scratch (HART-sized): the same patch tokens, no pretraining."""

    def __init__(self, model_cfg: ModelConfig, data: DataSpec):
        super().__init__(model_cfg, data)
        from fedhar.model.frontend import ConvProjection

        d = model_cfg.hidden
        self.frontend = ConvProjection(
            data.layout.group_dict, data.window_len, model_cfg.tokens, d,
            model_cfg.conv_channels, model_cfg.conv_depth, model_cfg.kernel_size, model_cfg.dropout,
            model_cfg.stats_token,
        )  # fmt: skip
        layer = nn.TransformerEncoderLayer(
            d, model_cfg.heads, dim_feedforward=2 * d, dropout=model_cfg.dropout, batch_first=True, norm_first=True,
            activation="gelu",
        )  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, model_cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, len(data.label_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.frontend(self.normalize(x)))
        return self.head(self.norm(h.mean(dim=1)))
