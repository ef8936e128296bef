"""The Flower ``ClientApp`` entry point, ``clients.app:app`` in pyproject.toml's ``[tool.flwr.app.components]``.

fedhar's ClientApp is defined in ``fedhar.federated.client_app`` (describe / train / evaluate handlers and the
client-side DP mod); this module only makes it loadable where Flower looks for it.
"""

from fedhar.environment import set_process_environment

set_process_environment()  # an entry point: before the ClientApp's imports load torch

from fedhar.federated.client_app import app  # noqa: E402, F401 - Flower loads `app` from here
