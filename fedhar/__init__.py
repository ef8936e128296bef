"""fedhar: federated and continual HAR on frozen LLM backbones adapted with LoRA."""

__version__ = "0.1.0"
