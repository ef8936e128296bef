"""Who is in the federation: the setup question every node is asked, what its answer may claim, who is online.

At setup (and whenever the data stage changes) each node says what it holds: a name, a window count and,
for the global normaliser, per-channel sums and sums of squares (no window leaves a client). Those are
claims, so they are checked against what real windows can give and capped in their influence
(``federated.max_weight_ratio``); a node's name is its authenticated one where the deployment has device
keys; a name already taken, a forged or failed answer leaves that node out (asked again later with
back-off) and never stops the federation. Deployed nodes come and go: ``refresh`` describes the ones that
joined late before every round.

Population scale (``federated.clients_per_round``): every node is asked once, at the run's set-up (its name,
window count and moments: the normaliser is fitted from all of them, once); a later stage asks only the nodes
each round draws (``Membership.sample``), so a stage costs messages per sampled node, not per node.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedhar import posthoc
from fedhar.config import ExperimentConfig
from fedhar.errors import DataError, FedharError
from fedhar.federated.client import MESSAGE_DESCRIBE, POSTHOC_STATISTICS
from fedhar.federated.records import RoundJob, record_to_state
from fedhar.federated.transport import check_metrics, reply_error, send_and_collect, wait_for_nodes

DESCRIBE_BACKOFF_MAX_ROUNDS = 4  # a node whose setup answer failed is asked again after 1, 2, then every 4 rounds
DESCRIBE_RETRY_TIMEOUT_S = 30.0  # how long a retry waits (a first try waits federated.round_timeout_s)
# setup questions waiting for an answer at once: Flower's simulation engine scans every stored message for every
# node every 0.1 s, so asking 1,000 nodes at once costs 1,000 × 1,000 per scan (simulations/scale.py: the run's
# set-up at 1,000 nodes took 78-147 s asking all at once, 34 s with 32 in flight)
DESCRIBE_IN_FLIGHT = 32
#: more windows than a device can record: 2.56 s windows at 50 % overlap, around the clock for over 10 years
MAX_CLIENT_WINDOWS = 250_000_000
#: |a canonical sample| no IMU reports: 100 g (consumer accelerometers saturate at 16-32 g, crash-test ones
#: near 100) or 100 rad/s (gyroscopes saturate near 35 rad/s, 2000 °/s)
PHYSICAL_LIMIT = 100.0


@dataclass
class ClientInfo:
    node_id: int
    name: str  # the node's authenticated name where the deployment has one, else the name the client sent
    num_examples: int  # the windows it described at setup
    weight: int = 0  # its aggregation weight: num_examples, capped (federated.max_weight_ratio)
    claimed: str | None = None  # the name it sent, when that differs from its authenticated name


@dataclass
class Federation:
    """The server's view of who is out there at the current stage."""

    stage: int
    clients: list[ClientInfo] = field(default_factory=list)  # sorted by name, only those holding data



@dataclass
class SetupTotals:
    """What the setup answers add up to: [count, sums, sums of squares] per channel (None: data.normalize off)
    and the post-hoc adapter's statistics (None: no train.posthoc)."""

    moments: np.ndarray | None
    posthoc: dict[str, np.ndarray] | None


def sample_size(holding: int, cfg: ExperimentConfig) -> int:
    """How many clients a round samples from ``holding`` clients with data: ``clients_per_round`` where set, else
    ``fraction_train`` of them, at least ``min_clients`` (at most all)."""
    fed = cfg.federated
    if fed.clients_per_round is not None:
        return min(holding, fed.clients_per_round)
    return min(holding, max(int(holding * fed.fraction_train), fed.min_clients))


def sample_clients(fed: Federation, cfg: ExperimentConfig, rnd: int,
                   online: set[int] | None = None) -> list[ClientInfo]:  # fmt: skip
    """``fraction_train`` of the connected clients holding data (at least ``min_clients``), seeded by round."""
    available = [c for c in fed.clients if online is None or c.node_id in online]
    k = max(int(len(available) * cfg.federated.fraction_train), cfg.federated.min_clients)
    if k > len(available):
        raise FedharError(
            f"round {rnd}: {len(available)} connected clients hold data at stage {fed.stage}, "
            f"fewer than federated.min_clients={cfg.federated.min_clients}"
        )
    rng = np.random.default_rng([cfg.seed, rnd])
    chosen = sorted(rng.choice(len(available), size=k, replace=False).tolist())
    return [available[i] for i in chosen]


class Membership:
    """The server's view of the nodes: described, failed (with back-off), online; the current federation."""

    def __init__(self, grid: Grid, job, model, say):
        self.grid, self.job, self.cfg, self.run, self.model, self._say = grid, job, job.cfg, job.run, model, say
        self.federation = Federation(stage=-1)
        self.described: set[int] = set()  # nodes asked at the current stage (with or without data)
        self.failed: dict[int, tuple[int, int]] = {}  # setup answer failed: node → (failures in a row, next round)
        self.online: set[int] | None = None  # connected nodes, as of the start of the round
        self.setup_errors: list[str] = []
        self.weight_cap = MAX_CLIENT_WINDOWS  # federated.max_weight_ratio × the median window count, set at setup
        # federated.clients_per_round: after the run's set-up, a stage's set-up asks only the nodes a round samples
        self.per_sample = self.cfg.federated.clients_per_round is not None
        self.seen: set[int] = set()  # nodes that ever answered a setup query (at any stage)
        self.names: dict[int, str] = {}  # the name each node holding data gave (the sampler's stable order)
        self.full_stage: int | None = None  # the stage at which every node was described (the run's set-up)
        self.queries = 0  # setup queries sent so far (the scale benchmark reports them)
        self.posthoc_config = posthoc.configured(self.cfg)  # train.posthoc: its statistics join the setup answer

    def describe(self, stage: int, rnd: int, fit: bool, late_nodes: list[int] | None = None,
                 sampled: bool = False) -> SetupTotals | None:  # fmt: skip
        """Ask every node what it holds at ``stage`` (before round ``rnd``); with ``fit``, return the totals of
        their moments and post-hoc statistics (the loop fits the normaliser and the post-hoc adapter from them).

        With ``late_nodes`` only those nodes are asked (they connected after the federation was described, or,
        ``sampled``, a round sampled them) and the clients among them join the current federation. A node whose
        earlier answer failed is asked only once its back-off has passed, and waited for at most
        ``DESCRIBE_RETRY_TIMEOUT_S``.

        With ``federated.clients_per_round`` only the run's set-up asks every node (once: names, window counts,
        the normaliser's moments); a later stage starts with nobody described, and ``sample`` asks the nodes
        each round draws: a stage's set-up costs a message per sampled node, not one per node of the population.
        """
        fed = self.cfg.federated
        if self.per_sample and not late_nodes and self.federation.stage >= 0 and stage != self.federation.stage:
            self.federation = Federation(stage)  # the weight cap stays the set-up's
            self.described, self.setup_errors = set(), []
            return None
        nodes = late_nodes or wait_for_nodes(self.grid, self.job.expected_nodes, fed.min_clients, self.job.stop,
                                             fed.client_wait_s)  # fmt: skip
        fresh = [n for n in nodes if n not in self.failed]
        retry = [n for n in nodes if n in self.failed and self.failed[n][1] <= rnd]
        retry_timeout = min(fed.round_timeout_s or math.inf, DESCRIBE_RETRY_TIMEOUT_S)
        job = RoundJob(self.cfg, 0, stage, self.cfg.train.lr, self.cfg.seed, None)
        replies: dict[int, Message | None] = {}
        for group, timeout in ((fresh, fed.round_timeout_s), (retry, retry_timeout)):
            messages = [Message(RecordDict({"config": job.to_record()}), dst_node_id=n,
                                message_type=MESSAGE_DESCRIBE) for n in group]  # fmt: skip
            self.queries += len(messages)
            if messages:
                replies.update(send_and_collect(self.grid, messages, timeout, self.job.stop, self.job.poll_interval_s,
                                                in_flight=DESCRIBE_IN_FLIGHT))  # fmt: skip
        clients, failures, parts, posthoc_parts, answered = [], {}, {}, {}, set()
        with_moments = fit and self.cfg.data.normalize
        with_posthoc = fit and self.posthoc_config is not None
        for node, reply in replies.items():
            if reply is None:
                waited = f"{retry_timeout} s (a retry)" if node in retry else f"round_timeout_s={fed.round_timeout_s}"
                failures[node] = f"no answer within {waited}"
                continue
            if (err := reply_error(reply)) is not None:
                failures[node] = err
                continue
            try:
                info, part, posthoc_part = self._check_description(node, reply, with_moments, with_posthoc)
            except (FedharError, KeyError, TypeError, ValueError) as e:
                failures[node] = f"setup answer rejected ({e})"
                continue
            answered.add(node)
            if info is None:
                continue
            clients.append(info)
            parts[node], posthoc_parts[node] = part, posthoc_part
        if not late_nodes:  # one name, one client: a device naming itself like another never stops the federation
            clients = self._unique_names(clients, failures)
        answered -= set(failures)
        for node in answered:
            self.failed.pop(node, None)
        errors = []
        for node, reason in failures.items():  # asked again later (it may be fixed), with back-off (it may hang)
            count = self.failed.get(node, (0, 0))[0] + 1
            self.failed[node] = (count, rnd + min(2 ** (count - 1), DESCRIBE_BACKOFF_MAX_ROUNDS))
            errors.append(f"node {node}: {reason} (asked again before round {self.failed[node][1]})")
        self.described = (self.described if late_nodes else set()) | answered
        self.seen |= answered
        self.names.update((c.node_id, c.name) for c in clients)
        self.setup_errors = errors
        if late_nodes:
            self._join(clients, errors, quiet=sampled)
            return None
        for err in errors:
            self._say(f"[yellow]setup: {err}[/]")
        if errors and not clients:
            raise FedharError(f"every client failed the setup round; first error: {errors[0]}")
        if not clients:
            waiting = len(nodes) - len(fresh) - len(retry)  # failed earlier, not yet due to be asked again
            raise DataError(f"none of the {len(answered)} nodes that answered holds training windows at stage {stage}"
                            + (f" ({waiting} more failed their setup earlier and wait to be asked again)" if waiting
                               else "")
                            + ": check data.classes and data.split.train against the clients' data (a device: its "
                            "--data / --subjects)")  # fmt: skip
        self.weight_cap = weight_cap([c.num_examples for c in clients], fed.max_weight_ratio)
        for c in clients:
            c.weight = min(c.num_examples, self.weight_cap)
        self.federation, self.full_stage = Federation(stage, clients), stage
        if not fit:
            return None
        # each client's moments count as much as its capped weight: an inflated count cannot set the normaliser
        moments = None
        if self.cfg.data.normalize:
            moments = sum(parts[c.node_id] * (c.weight / c.num_examples) for c in clients)
        posthoc_totals = None
        for c in clients:
            if (part := posthoc_parts[c.node_id]) is not None:
                posthoc_totals = part if posthoc_totals is None else {k: v + part[k] for k, v in posthoc_totals.items()}
        return SetupTotals(moments, posthoc_totals)

    @staticmethod
    def _unique_names(clients: list[ClientInfo], failures: dict[int, str]) -> list[ClientInfo]:
        """Clients sorted by name, one node per name: a later node with a taken name is left out (asked again
        later, when the other may have left), with the reason, instead of the run stopping."""
        kept: list[ClientInfo] = []
        for c in sorted(clients, key=lambda c: (c.name, c.node_id)):
            if kept and kept[-1].name == c.name:
                failures[c.node_id] = f"client name {c.name} is already used by node {kept[-1].node_id}; left out"
                continue
            kept.append(c)
        return kept

    def _check_description(self, node: int, reply: Message, with_moments: bool, with_posthoc: bool
                           ) -> tuple[ClientInfo | None, np.ndarray | None, dict[str, np.ndarray] | None]:  # fmt: skip
        """A client's setup answer, checked: (client, [count, sums, sums of squares], post-hoc statistics);
        client None: holds no data.

        The name is the node's authenticated one where the deployment has it (``ServerJob.node_names``): a
        device's claimed name is only a label. Claims are checked for what real windows can give: a window
        count below ``MAX_CLIENT_WINDOWS``, exactly ``window`` values per channel per window, sums of squares
        no smaller than a zero variance allows, and means / mean squares a real IMU can record.
        """
        n, metrics = check_metrics(reply)
        if n == 0:
            return None, None, None
        if n > MAX_CLIENT_WINDOWS:
            raise FedharError(f"claims {n:,} training windows, more than any device records "
                              f"({MAX_CLIENT_WINDOWS:,}: years of continuous recording)")  # fmt: skip
        claimed = str(reply.content["client"]["name"])
        known = self.job.node_names(node) if self.job.node_names is not None else None
        info = ClientInfo(node, known or claimed, n, claimed=claimed if known and known != claimed else None)
        stats = self._check_posthoc_statistics(reply, info, n) if with_posthoc else None
        if not with_moments:
            return info, None, stats
        channels = self.model.data.layout.num_channels
        expected = {"sum": ((channels,), np.dtype("float64")), "sum_sq": ((channels,), np.dtype("float64"))}
        m = record_to_state(reply.content["moments"], expected, where=f"client {info.name}'s moments")
        count = metrics.get("num-values", 0.0)  # finite: check_metrics; the sums: record_to_state
        check_moments(count, m["sum"], m["sum_sq"], windows=n, window_len=self.model.data.window_len)
        return info, np.concatenate([[count], m["sum"], m["sum_sq"]]), stats

    def _check_posthoc_statistics(self, reply: Message, info: ClientInfo, windows: int) -> dict[str, np.ndarray]:
        """The post-hoc adapter's statistics a client sent at setup, checked before they are summed."""
        config = self.posthoc_config
        where = f"client {info.name}'s {config.name} statistics"
        if POSTHOC_STATISTICS not in reply.content:
            raise FedharError(f"sent no {config.name} statistics although train.posthoc is set")
        stats = record_to_state(reply.content[POSTHOC_STATISTICS], config.statistics_spec(self.model.data.layout),
                                where=where)  # fmt: skip
        try:
            config.check_statistics(stats, windows)
        except ValueError as e:
            raise FedharError(f"{where} are impossible ({e})") from None
        return stats

    def _join(self, clients: list[ClientInfo], errors: list[str], quiet: bool = False) -> None:
        """Late nodes join the federation; a known name on a new node id is that client come back (``quiet``:
        nodes a round sampled, described as it drew them)."""
        by_name = {c.name: c for c in self.federation.clients}
        for c in clients:
            old = by_name.get(c.name)
            if old is not None and (self.online is None or old.node_id in self.online):
                errors.append(f"node {c.node_id}: client name {c.name} is already used by connected node {old.node_id}")
                continue
            c.weight = min(c.num_examples, self.weight_cap)  # the federation's cap: a late claim cannot raise it
            by_name[c.name] = c
            if not quiet:
                self._say(f"client {c.name} {'rejoined' if old else 'joined'} ({c.num_examples} windows)")
        for err in errors:
            self._say(f"[yellow]{'a sampled' if quiet else 'a joining'} node failed: {err}[/]")
        self.federation = Federation(self.federation.stage, sorted(by_name.values(), key=lambda c: c.name))
        self.write_federation()

    def write_federation(self) -> None:
        self.run.write_json("federation.json", {
            "stage": self.federation.stage,
            "described": "the nodes rounds sampled at this stage so far (federated.clients_per_round)"
            if self.per_sample and self.federation.stage != self.full_stage else "every node",
            "nodes_seen": len(self.seen),
            "clients": [{"name": c.name, "windows": c.num_examples, "weight": c.weight,
                         **({"claimed_name": c.claimed} if c.claimed else {})} for c in self.federation.clients],
            "weight_cap": self.weight_cap,
            "failed_nodes": self.setup_errors,
            "normalizer": self.model.data.normalizer.to_json(),
            "normalizer_source": "client moments (sums and sums of squares)" if self.cfg.data.normalize else "identity",
        })  # fmt: skip

    def sample(self, rnd: int) -> list[ClientInfo]:
        """The clients round ``rnd`` trains: ``sample_clients`` (fraction_train), or with ``clients_per_round``
        the first k nodes holding data in a seeded permutation of the connected nodes (ordered by the names they
        gave: the same draw after a resume), describing at the current stage those not yet asked, k at a time.
        Fewer than k only when fewer hold data (never below ``min_clients``)."""
        if not self.per_sample:
            return sample_clients(self.federation, self.cfg, rnd, self.online)
        fed, stage = self.cfg.federated, self.federation.stage
        holding = {c.node_id: c for c in self.federation.clients}
        nodes = self.online if self.online is not None else self.seen
        pool = sorted((n for n in nodes if self.failed.get(n, (0, 0))[1] <= rnd
                       and (n in holding or n not in self.described)),
                      key=lambda n: (n not in self.names, self.names.get(n, ""), n))  # fmt: skip
        rng = np.random.default_rng([self.cfg.seed, rnd])
        order = [pool[i] for i in rng.permutation(len(pool))]
        chosen: list[ClientInfo] = []
        start = 0
        while len(chosen) < fed.clients_per_round and start < len(order):
            batch = order[start : start + fed.clients_per_round - len(chosen)]
            start += len(batch)
            if ask := [n for n in batch if n not in self.described]:
                self.describe(stage, rnd, fit=False, late_nodes=ask, sampled=True)
                holding = {c.node_id: c for c in self.federation.clients}
            chosen += [holding[n] for n in batch if n in holding]
        if len(chosen) < fed.min_clients:
            raise FedharError(f"round {rnd}: {len(chosen)} connected clients hold data at stage {stage}, fewer than "
                              f"federated.min_clients={fed.min_clients}")  # fmt: skip
        return sorted(chosen, key=lambda c: c.name)

    def refresh(self, rnd: int) -> None:
        """Which nodes are connected now; describe the ones not yet asked at this stage (late joiners), and
        those whose failed answer's back-off has passed.

        Waits up to ``federated.client_wait_s`` while fewer than ``min_clients`` clients are connected.
        """
        fed = self.cfg.federated
        deadline = time.monotonic() + fed.client_wait_s
        while True:
            self.online = set(self.grid.get_node_ids())
            self.failed = {n: f for n, f in self.failed.items() if n in self.online}  # one that left comes back fresh
            known = self.seen if self.per_sample else self.described  # per_sample: a stage's nodes are asked as drawn
            new = sorted(n for n in self.online - known if self.failed.get(n, (0, 0))[1] <= rnd)
            if new:
                self.describe(self.federation.stage, rnd, fit=False, late_nodes=new)
            if self.per_sample:  # connected, and holding data or not yet asked at this stage
                holding = {c.node_id for c in self.federation.clients}
                connected = [n for n in self.online if n in holding or n not in self.described]
            else:
                connected = [c for c in self.federation.clients if c.node_id in self.online]
            if len(connected) >= fed.min_clients or time.monotonic() > deadline:
                return
            if self.job.stop is not None and self.job.stop.is_set():
                raise FedharError("the simulation engine stopped while waiting for clients")
            time.sleep(max(self.job.poll_interval_s, 1.0))


def check_moments(count: float, total: np.ndarray, total_sq: np.ndarray, windows: int, window_len: int) -> None:
    """Refuse per-channel moments that no set of ``windows`` real windows gives (they would set the normaliser)."""
    if count != windows * window_len:
        raise FedharError(f"moments over {count:g} values per channel, but {windows} windows of {window_len} samples "
                          f"hold {windows * window_len}")  # fmt: skip
    mean, mean_sq = total / count, total_sq / count
    if (mean_sq < mean**2 * (1 - 1e-9) - 1e-12).any():
        bad = int(np.argmax(mean**2 - mean_sq))
        raise FedharError(f"moments are impossible: channel {bad}'s sum of squares is below sum²/count (a negative "
                          "variance)")  # fmt: skip
    if (np.abs(mean) > PHYSICAL_LIMIT).any() or (mean_sq > PHYSICAL_LIMIT**2).any():
        raise FedharError(f"moments are impossible: a channel's mean or RMS exceeds {PHYSICAL_LIMIT:g} (g or rad/s), "
                          "beyond what an IMU records")  # fmt: skip


def weight_cap(counts: list[int], ratio: float | None) -> int:
    """The largest aggregation weight a client may have: ``ratio`` × the median described window count.

    Why: a client's window count is its own claim; uncapped, one device claiming a billion windows would
    decide every average. The median is what most clients hold, so honest size differences up to ``ratio``
    keep their weight. ``ratio`` None: no cap."""
    if ratio is None or not counts:
        return MAX_CLIENT_WINDOWS
    return max(1, int(ratio * float(np.median(counts))))
