"""Federated training with Flower: trainable-state records, strategies, client and server logic, simulation.

Importing it changes nothing in the process; the environment federated processes need (no Flower telemetry,
passive OpenMP threads) is set by ``fedhar.environment.set_process_environment`` at the entry points.
"""
