"""Flower ``ServerApp``: the fedhar round loop, configured by ``[tool.flwr.app.config]`` in pyproject.toml.

``config-file`` names the experiment YAML, ``overrides`` holds ``key=value`` pairs (space
separated), e.g. ``flwr run . --run-config 'overrides="federated.rounds=3 name=demo"'``.
``fedhar simulate`` runs the same round loop through ``build_server_app`` with its config in hand.
"""

from fedhar.environment import set_process_environment

set_process_environment()  # an entry point: before the round loop's imports load torch

from fedhar.federated.server import build_server_app  # noqa: E402

app = build_server_app()
