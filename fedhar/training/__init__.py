"""The one local-training loop (``loop.fit``), shared by centralized runs, federated clients and benchmarks.

``centralized`` is ``fedhar train`` around it; ``augment`` the on-the-fly augmentations it applies.
"""
