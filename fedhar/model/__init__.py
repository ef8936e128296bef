"""The HAR model: conv projection to tokens, a frozen backbone adapted with LoRA, a head; baselines; checkpoints.

What trains (frontend, adapters, head) is what a checkpoint stores and what a federation sends.
"""
