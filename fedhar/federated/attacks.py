"""Simulated poisoning (``federated.attack``), for robustness benchmarks: never part of a deployment.

Model poisoning (``sign-flip``, ``scale``, ``gaussian``) happens between the simulated clients and the
round loop: ``AttackedGrid`` wraps the simulation's Grid and rewrites the train replies of the attacking
clients, exactly as a malicious device would send them (the round loop's checks and bounds then see
them as they would see a real attack). Data poisoning (``label-flip``) happens where a simulated client
gets its windows (``fedhar.federated.data``, the simulated branch only): it trains on labels shifted by
one class, from round 1. A device's ``fedhar client`` holds its own recordings through another branch
and never reads the attack; ``fedhar server`` refuses a config that sets one.

Which clients attack is seeded (``seed``, the client names): the same config attacks the same clients.
"""

from __future__ import annotations

import zlib

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from fedhar.config import ExperimentConfig
from fedhar.errors import ConfigError


def attacking_clients(cfg: ExperimentConfig, names: list[str]) -> list[str]:
    """The attackers among ``names``: ``attack.clients`` of them (a count, or a fraction), seeded."""
    attack = cfg.federated.attack
    if attack is None:
        return []
    names = sorted(names)
    k = int(attack.clients) if attack.clients >= 1 else max(1, round(attack.clients * len(names)))
    if k > len(names):
        raise ConfigError(f"federated.attack.clients={attack.clients}: only {len(names)} clients exist")
    rng = np.random.default_rng([cfg.seed, 0xA77AC])
    return sorted(names[i] for i in rng.choice(len(names), size=k, replace=False))


def poison(kind: str, state: dict[str, np.ndarray], sent: dict[str, np.ndarray], factor: float, std: float,
           rng: np.random.Generator) -> dict[str, np.ndarray]:  # fmt: skip
    """What an attacking client sends instead of its honest update ``state`` (``sent``: the global state)."""
    out = {}
    for k, w in state.items():
        g = sent[k].astype(np.float64)
        delta = w.astype(np.float64) - g
        if kind == "sign-flip":
            new = g - factor * delta
        elif kind == "scale":
            new = g + factor * delta
        elif kind == "gaussian":
            new = g + rng.normal(0.0, std, size=g.shape)
        else:
            raise ConfigError(f"attack `{kind}` does not rewrite updates")
        out[k] = new.astype(w.dtype)
    return out


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Label flipping: every window labelled as the next class (no label stays right)."""
    return ((y + 1) % num_classes).astype(y.dtype)


class AttackedGrid(Grid):
    """The simulation's Grid, with the attacking clients' train replies rewritten (model poisoning)."""

    def __init__(self, grid: Grid, cfg: ExperimentConfig, attackers: list[str]):
        self.inner, self.cfg, self.attackers = grid, cfg, set(attackers)
        self.sent: dict[str, Message] = {}  # train messages by id: the global state each reply answers

    # the Grid interface, delegated
    def set_run(self, run_id):
        return self.inner.set_run(run_id)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args, **kwargs):
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self.inner.get_node_ids()

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        for i, m in zip(ids, messages):
            if i and m.metadata.message_type == "train":
                self.sent[i] = m
        return ids

    def pull_messages(self, message_ids):
        replies = list(self.inner.pull_messages(message_ids))
        for reply in replies:
            sent = self.sent.pop(reply.metadata.reply_to_message_id, None)
            if sent is not None and not reply.has_error():
                self._tamper(reply, sent)
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        ids = self.push_messages(messages)
        return self.pull_messages(ids)

    def _tamper(self, reply: Message, sent: Message) -> None:
        from fedhar.federated.records import state_to_record

        attack = self.cfg.federated.attack
        name = str(reply.content["client"]["name"]) if "client" in reply.content else ""
        rnd = int(sent.content["config"]["round"])
        if name not in self.attackers or attack.kind == "label-flip" or rnd < attack.from_round:
            return
        if "arrays" not in reply.content:
            return
        state = {k: v.numpy() for k, v in reply.content["arrays"].items()}
        glob = {k: v.numpy() for k, v in sent.content["arrays"].items()}
        rng = np.random.default_rng([self.cfg.seed, rnd, zlib.crc32(name.encode())])
        reply.content["arrays"] = state_to_record(poison(attack.kind, state, glob, attack.factor, attack.std, rng))
