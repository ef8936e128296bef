"""Flower ``ClientApp`` (Message API): thin routing to ``fedhar.federated.client``.

* ``query.describe``: the client's name, window count and per-channel moments (setup round);
* ``train``: load the received trainable state, train E local epochs with the shared training
  loop, reply with the new trainable state, the number of examples and metrics;
* ``evaluate``: score the received state on the client's local held-out windows.
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedhar.federated import client

app = ClientApp()


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    return client.handle_describe(message, context)


@app.train()
def train(message: Message, context: Context) -> Message:
    return client.handle_train(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return client.handle_evaluate(message, context)
