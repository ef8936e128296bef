"""Federated training with Flower: trainable-state records, strategies, client and server logic, simulation.

Flower reads ``FLWR_TELEMETRY_ENABLED`` when it is first imported; fedhar keeps telemetry off
unless the user has set the variable (opt in with ``FLWR_TELEMETRY_ENABLED=1``).
"""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
