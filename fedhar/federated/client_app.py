"""fedhar's Flower ``ClientApp`` (Message API): thin routing to ``fedhar.federated.client``.

Flower loads it as ``clients.app:app`` (pyproject.toml), a wrapper that re-exports this ``app``; simulation,
``fedhar client`` and the in-process ``LocalGrid`` use it from here.

* ``query.describe``: the client's name, window count and per-channel moments (setup round);
* ``train``: load the received trainable state, train E local epochs with the shared training
  loop, reply with the new trainable state, the number of examples and metrics;
* ``evaluate``: score the received state on the client's local held-out windows.

``client_side_dp_mod``: with client-side differential privacy (``federated.dp.side: client``) the
server's message carries a clipping norm, and Flower's clipping mods clip the update on the device
before it is sent; without one the message passes untouched.
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedhar.federated import client

app = ClientApp(mods=[client.client_side_dp_mod])


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    return client.handle_describe(message, context)


@app.train()
def train(message: Message, context: Context) -> Message:
    return client.handle_train(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return client.handle_evaluate(message, context)
