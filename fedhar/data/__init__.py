"""Recordings to windows: dataset loaders, the synthetic IMU generator, device transforms, windowing and splits.

The first layer: everything after it (model, training, federated) sees only ``WindowSet``s.
"""
