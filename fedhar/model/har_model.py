"""The HAR model: normalise → conv projection → frozen (LoRA-adapted) backbone → pooling → head."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from torch import nn

from fedhar.config import ModelConfig
from fedhar.errors import ConfigError
from fedhar.model.backbones import Backbone, load_backbone
from fedhar.model.base import DataSpec, HARNet, windowing_record  # noqa: F401 - re-exported: callers import them from here
from fedhar.model.frontend import ConvProjection, WindowCues


class LLMHARModel(HARNet):
    """Frontend tokens go into the backbone as ``inputs_embeds``; a linear head reads the pooled output."""

    def __init__(self, model_cfg: ModelConfig, data: DataSpec, backbone: Backbone, seed: int = 0):
        super().__init__(model_cfg, data)
        torch.manual_seed(seed)  # same seed → same frontend, LoRA and head init on every client
        self.frontend = ConvProjection(
            data.layout.group_dict, data.window_len, model_cfg.tokens, backbone.hidden_size,
            model_cfg.conv_channels, model_cfg.conv_depth, model_cfg.kernel_size, model_cfg.dropout,
            model_cfg.stats_token,
        )  # fmt: skip
        self.backbone_info = dataclasses.replace(backbone, module=None)
        self.backbone_pretrained = backbone.pretrained
        module = backbone.module
        if getattr(module, "_fedhar_in_use", False):  # LoRA and requires_grad change the module in place
            raise ValueError("this backbone already belongs to a model; load a fresh one per model (load_backbone)")
        module._fedhar_in_use = True
        if model_cfg.finetune == "lora":
            module = _add_lora(module, model_cfg, backbone)
        elif model_cfg.finetune == "full":
            module.requires_grad_(True)
        self.backbone = module
        self.pooling = model_cfg.pooling
        if self.pooling == "auto":
            self.pooling = "last" if backbone.is_causal else "mean"
        self.norm = nn.LayerNorm(backbone.hidden_size)
        self.cues = WindowCues(data.layout.group_dict) if model_cfg.head_cues else None
        cue_width = self.cues.width if self.cues is not None else 0
        self.head = nn.Linear(backbone.hidden_size + cue_width, len(data.label_names))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.frontend(self.normalize(x))
        mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        hidden = self.backbone(inputs_embeds=tokens, attention_mask=mask).last_hidden_state
        pooled = self.norm(hidden[:, -1] if self.pooling == "last" else hidden.mean(dim=1))
        if self.cues is not None:
            pooled = torch.cat([pooled, self.cues(x)], dim=1)
        return self.head(pooled)

    def train(self, mode: bool = True) -> "LLMHARModel":
        super().train(mode)
        if self.model_cfg.finetune == "frozen":
            self.backbone.eval()
        return self


def _add_lora(module: nn.Module, cfg: ModelConfig, backbone: Backbone) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora.targets or backbone.lora_targets
    if not targets:
        raise ConfigError(
            f"no default LoRA targets for architecture `{backbone.arch}`; set model.lora.targets "
            "to the names of its attention projection layers"
        )
    names = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError(f"model.lora.targets {missing} are not layers of `{backbone.spec}` ({backbone.arch})")
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(targets),
        fan_in_fan_out=backbone.fan_in_fan_out,
        bias="none",
    )
    with warnings.catch_warnings():  # peft 0.21 calls a transformers API deprecated in 5.x
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = get_peft_model(module, lora)
    if cfg.lora.freeze_a:
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                p.requires_grad_(False)
    return model


def build_model(model_cfg: ModelConfig, data: DataSpec, seed: int = 0, backbone: Backbone | None = None,
                allow_download: bool = True, meta: bool = False) -> HARNet:  # fmt: skip
    """The model a config describes. ``backbone``: one already loaded for this model (it is adapted in place).

    ``allow_download=False``: the backbone must be on this machine (how checkpoints load it). ``meta``: the
    backbone is built from its config without weights (call inside ``torch.device("meta")``: shapes only)."""
    model: HARNet
    if model_cfg.kind == "llm":
        if backbone is None:
            backbone = load_backbone(model_cfg.backbone, model_cfg.num_layers, seed, allow_download=allow_download,
                                     meta=meta, pretrained=model_cfg.pretrained)  # fmt: skip
        model = LLMHARModel(model_cfg, data, backbone, seed)
    else:
        from fedhar.model.baselines import DeepConvLSTM, ScratchTransformer

        torch.manual_seed(seed)
        model = (DeepConvLSTM if model_cfg.kind == "deepconvlstm" else ScratchTransformer)(model_cfg, data)
    model.init_seed = seed
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (the backbone's dropped token-embedding table is not counted)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": int(trainable), "total": int(total)}


def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, len(model.data.label_names)), np.float32)
