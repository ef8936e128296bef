"""Messages on Flower's Grid: push, pull until answered or timed out, and tell a usable reply from an error.

The round loop speaks to clients only through these: replies are matched by the message they answer, a
message the SuperLink refuses becomes an error reply, and a reply's metrics are checked before use.
"""

from __future__ import annotations

import math
import threading
import time

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedhar.errors import FedharError

PULL_INTERVAL_S = 0.05  # in-process simulation; a deployment's HTTP Grid polls every DEPLOY_POLL_S
DEPLOY_POLL_S = 0.5


def send_and_collect(grid: Grid, messages: list[Message], timeout: float | None, stop: threading.Event | None,
                     poll_s: float = PULL_INTERVAL_S, in_flight: int | None = None) -> dict[int, Message | None]:  # fmt: skip
    """Push one message per node; pull replies until all arrived, ``timeout`` passed, or the engine stopped.

    Returns ``{destination node: reply, or None when none came}``. Replies are matched by the message
    they answer, not by their sender: an error reply the SuperLink writes for a node that left the
    federation (node unavailable: it stopped sending heartbeats) comes from the SuperLink itself. A
    message the SuperLink refuses (its node left before it was sent) gets an error reply here.

    With ``in_flight`` at most that many messages wait for a reply at once (the next is pushed as one is
    answered), and ``timeout`` runs for each message from its push. Why: Flower's simulation engine scans
    every stored message for every node every 0.1 s, so describing a population of thousands at once costs
    nodes × messages per scan; a bounded window keeps it nodes × window.
    """
    queue = list(messages)
    window = len(queue) if in_flight is None else max(1, in_flight)
    replies: dict[int, Message | None] = {}
    dst: dict[str, int] = {}
    pushed_at: dict[str, float] = {}
    pending: set[str] = set()
    while queue or pending:
        if queue and len(pending) < window:
            batch, queue = queue[: window - len(pending)], queue[window - len(pending) :]
            for i, m in zip(_push(grid, batch), batch, strict=True):
                replies[m.metadata.dst_node_id] = None if i else refused_reply(m)
                if i:
                    dst[i], pushed_at[i] = m.metadata.dst_node_id, time.monotonic()
                    pending.add(i)
        if pending:
            for reply in grid.pull_messages(pending):
                answered = reply.metadata.reply_to_message_id
                if answered in pending:
                    replies[dst[answered]] = reply
                    pending.discard(answered)
        if timeout is not None:  # unanswered in time: its reply stays None
            pending -= {i for i in pending if time.monotonic() - pushed_at[i] > timeout}
        if not pending and not queue:
            break
        if stop is not None and stop.is_set():
            raise FedharError("the simulation engine stopped while clients were still training")
        if len(pending) >= window or not queue:
            time.sleep(poll_s)
    return replies


def _push(grid: Grid, messages: list[Message]) -> list[str]:
    """Message ids in the order of ``messages`` ("" or None for a message the SuperLink refused)."""
    ids = list(grid.push_messages(messages))
    if len(ids) != len(messages):  # HttpGrid answers HTTP 413 with []; InMemoryGrid drops what it refuses
        raise FedharError(
            f"the SuperLink accepted {len(ids)} of {len(messages)} `{messages[0].metadata.message_type}` messages "
            "without saying which (Flower's log above says why; a deployment's HTTP 413 means the request was too "
            "large: sample fewer clients per round, federated.fraction_train)"
        )
    return ids


def refused_reply(message: Message) -> Message:
    """The error reply standing in for a message the SuperLink did not accept."""
    reason = "the SuperLink refused the message (the node left the federation before it was sent)"
    return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=message)


def check_metrics(reply: Message) -> tuple[int, dict[str, float]]:
    """A reply's metrics record, checked: (num-examples, the other metrics as finite floats).

    ``num-examples`` must be a whole count >= 0; every value a finite number (NaN would poison
    averages and plots)."""
    if "metrics" not in reply.content:
        raise FedharError("the reply has no metrics record")
    metrics = {}
    for key, value in dict(reply.content["metrics"]).items():
        if isinstance(value, list) or not math.isfinite(float(value)):
            raise FedharError(f"metric {key} is {value!r}, not a finite number")
        metrics[key] = float(value)
    if "num-examples" not in metrics:
        raise FedharError("the reply has no num-examples")
    n = metrics.pop("num-examples")
    if n < 0 or n != int(n):
        raise FedharError(f"num-examples is {n}, not a count of windows")
    return int(n), metrics


def unusable_reason(reply: Message | None, timeout: float | None) -> str | None:
    """Why a client's reply cannot be used (none came in time, or it is an error), or None."""
    if reply is None:
        return f"no reply within federated.round_timeout_s={timeout}"
    return reply_error(reply)


def reply_error(reply: Message) -> str | None:
    if reply.has_error():
        return str(reply.error.reason).strip().splitlines()[-1][:300]
    return None


def wait_for_nodes(grid: Grid, expected: int | None, minimum: int, stop: threading.Event | None = None,
                   wait_s: float = 120.0) -> list[int]:  # fmt: skip
    """Node ids once the federation is up (simulation registers its virtual nodes right after start)."""
    deadline = time.monotonic() + wait_s
    want = expected or minimum
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want:
            if expected is None:  # a real deployment: give late nodes a moment to connect
                time.sleep(1.0)
                nodes = sorted(grid.get_node_ids())
            return nodes
        if stop is not None and stop.is_set():
            raise FedharError("the simulation engine stopped before the client nodes registered")
        if time.monotonic() > deadline:
            raise FedharError(f"only {len(nodes)} of {want} client nodes connected within {wait_s:.0f} s "
                              "(federated.client_wait_s)")  # fmt: skip
        time.sleep(0.2)


class LocalGrid(Grid):
    """A Grid that hands each message to fedhar's ClientApp in this process, one node after another.

    Why: the whole round loop without an engine or Ray, deterministic and fast, for the tests that drive
    federations end to end; node ``100 + i`` is simulated partition ``i``.
    """

    def __init__(self, num_nodes: int):
        from flwr.app import Context, RecordDict

        from fedhar.federated.client_app import app

        self.app = app
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, node_config={"partition-id": i},
                                          state=RecordDict(), run_config={}) for i in range(num_nodes)}  # fmt: skip
        self.replies: dict[str, Message] = {}

    def set_run(self, run) -> None:
        raise NotImplementedError("a LocalGrid serves one run")

    @property
    def run(self):
        raise NotImplementedError("a LocalGrid serves one run")

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError("the round loop builds its own messages")

    def get_node_ids(self):
        return list(self.contexts)

    def handle(self, message: Message) -> Message:
        return self.app(message, self.contexts[message.metadata.dst_node_id])

    def push_messages(self, messages):
        ids = []
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"m{len(self.replies) + i}-{time.monotonic_ns()}"
            self.replies[m.metadata.message_id] = self.handle(m)
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in sorted(message_ids, reverse=True) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
