"""The server side: setup round, then R rounds of sample → train → aggregate → evaluate centrally → checkpoint.

Runs as a Flower ``ServerApp`` main (``server/app.py``, and ``fedhar simulate`` through the same
factory). The round loop talks to clients only through Flower messages on the ``Grid``:

* **setup** (``query.describe``, every node): each client answers with its name, its number of
  training windows and per-channel sums / sums of squares of its windows; the server fits the
  global input normaliser from those moments (no raw window leaves a client) and stores it
  with every checkpoint. With ``train.client_calibration`` each client also sends, per class of
  the pair, its window count and the sums and outer-product sums of the posture cues; the server
  fits the calibration direction from their totals (the same direction as pooled data gives).
* **round r** (``train``): a seeded sample of the clients that hold data gets the global
  trainable tensors, the round's learning rate and a per-client seed; replies carry the new
  tensors and the number of examples; the strategy aggregates; the server scores the global
  model on the validation and test subjects (never seen by clients) and checkpoints.
* optional client-side evaluation (``evaluate``) on each client's local held-out windows.

Which data clients hold is named by a *stage* sent with every message; clients are
described again whenever the stage changes, so clients may come and go between rounds.

Deployed clients (``fedhar server``) come and go on their own: before every round the loop asks the
Grid which nodes are connected, describes nodes it has not seen (a device that joined late, or
came back under a new node id) and samples only connected clients. A node whose setup answer failed
(an error, or none within ``federated.round_timeout_s``) is asked again after 1, 2, then every 4
rounds, each retry waiting at most ``DESCRIBE_RETRY_TIMEOUT_S``: a hung device costs the full
timeout once, not every round. A client that fails, is
reported unavailable by the SuperLink (it stopped sending heartbeats) or misses
``federated.round_timeout_s`` is left out of that round's aggregate; the round goes on when at
least ``min_clients`` updates arrive. Every update is checked before it is aggregated (tensor
names, shapes, dtypes, finite values, the number of examples the client described); a bad one is
rejected with its reason in ``rounds.json`` without failing the round.

Resumability: after each round the state is written to ``state/round-NNNN/`` (a temp folder
renamed into place), then ``rounds.json``; ``--resume`` reloads the last round in ``rounds.json``.
All randomness (client sampling, client seeds) is derived from (seed, round, client name), so a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from safetensors.numpy import load_file, save_file

from fedhar.calibration import PairCalibration, num_posture_cues
from fedhar.cli.common import console
from fedhar.config import ExperimentConfig, load_config
from fedhar.data.preprocess import Normalizer
from fedhar.data.recording import natural_key
from fedhar.errors import ConfigError, DataError, FedharError
from fedhar.config import shipped_config
from fedhar.federated.client import MESSAGE_DESCRIBE, PAIR_STATISTICS
from fedhar.federated.data import held_out_split, stage_of_round, subject_split
from fedhar.federated.records import RoundJob, record_bytes, record_to_state, state_to_record
from fedhar.federated.report import plot_rounds, summarize
from fedhar.federated.strategies import ClientUpdate, Strategy, check_strategy, lora_pairs, make_strategy, product_gap
from fedhar.model.har_model import DataSpec, HARNet, build_model, parameter_counts, predict_logits, windowing_record
from fedhar.model.state import expected_spec, get_trainable_state, read_checkpoint, save_checkpoint, set_trainable_state
from fedhar.results.run import RunDir
from fedhar.training.loop import metrics_from_logits

STATE_DIR = "state"
SERVER_STATE_FILE = "server.safetensors"
PULL_INTERVAL_S = 0.05  # in-process simulation; a deployment's HTTP Grid polls every DEPLOY_POLL_S
DEPLOY_POLL_S = 0.5
DESCRIBE_BACKOFF_MAX_ROUNDS = 4  # a node whose setup answer failed is asked again after 1, 2, then every 4 rounds
DESCRIBE_RETRY_TIMEOUT_S = 30.0  # how long a retry waits (a first try waits federated.round_timeout_s)
#: more windows than a device can record: 2.56 s windows at 50 % overlap, around the clock for over 10 years
MAX_CLIENT_WINDOWS = 250_000_000
#: |a canonical sample| no IMU reports: 100 g (consumer accelerometers saturate at 16-32 g, crash-test ones
#: near 100) or 100 rad/s (gyroscopes saturate near 35 rad/s, 2000 °/s)
PHYSICAL_LIMIT = 100.0


@dataclass
class ServerJob:
    """What the server main runs: the resolved config, the run folder, and how the federation was started."""

    cfg: ExperimentConfig
    run: RunDir
    resume: bool = False
    expected_nodes: int | None = None  # simulation: every virtual node registers before the first round
    progress: bool = True
    stop: threading.Event | None = None  # set when the engine under the server has ended (the loop stops)
    poll_interval_s: float = PULL_INTERVAL_S  # how often replies are pulled from the Grid
    simulated: bool = False  # `fedhar simulate`: the clients hold the config's training split (else unknown here)
    # the authenticated name of a node (deployments with device keys), which replaces the name the client claims;
    # None (or a node it does not know): the claimed name is used
    node_names: Callable[[int], str | None] | None = None


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


def build_server_app(job: ServerJob | None = None) -> ServerApp:
    """A ServerApp running the fedhar round loop.

    Without ``job`` (``flwr run``) it reads ``config-file`` / ``overrides`` from the run config.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, job or job_from_run_config(dict(context.run_config)))

    return app


def resolve_config_path(name: str) -> Path:
    """A relative ``config-file`` is looked up in the working directory, then among the configs fedhar ships
    (``configs/NAME``): an installed fedhar has no source checkout to look in."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.is_file():
        return path
    if path.parent == Path("configs"):
        return shipped_config(path.name)
    raise ConfigError(f"config-file `{name}` is not a file in the working directory {Path.cwd()}; give an "
                      "absolute path, or configs/NAME for a config fedhar ships")  # fmt: skip


def job_from_run_config(run_config: dict) -> ServerJob:
    """The job ``flwr run .`` describes through ``[tool.flwr.app.config]`` (or ``--run-config``)."""
    if "config-file" not in run_config:
        raise ConfigError("the Flower run config needs `config-file` (see [tool.flwr.app.config] in pyproject.toml)")
    overrides = shlex.split(str(run_config.get("overrides", "")))
    cfg = check_strategy(load_config(resolve_config_path(str(run_config["config-file"])), overrides))
    return ServerJob(cfg, RunDir.create(cfg, kind="flwr-run"))


# ---- round bookkeeping ----------------------------------------------------------------------


def round_lr(cfg: ExperimentConfig, rnd: int) -> float:
    """Client learning rate of round ``rnd`` (1-based): exponential decay, or a cosine over the rounds."""
    fed = cfg.federated
    if fed.lr_schedule == "cosine":
        return cfg.train.lr * 0.5 * (1.0 + math.cos(math.pi * (rnd - 1) / fed.rounds))
    return cfg.train.lr * fed.lr_decay ** (rnd - 1)


def client_seed(seed: int, rnd: int, name: str) -> int:
    """Training seed of one client in one round: independent of which worker or order runs it."""
    return int(np.random.SeedSequence([seed, rnd, zlib.crc32(name.encode())]).generate_state(1)[0])


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


def _send(grid: Grid, messages: list[Message], timeout: float | None, stop: threading.Event | None,
          poll_s: float = PULL_INTERVAL_S) -> dict[int, Message | None]:  # fmt: skip
    """Push one message per node; pull replies until all arrived, ``timeout`` passed, or the engine stopped.

    Returns ``{destination node: reply, or None when none came}``. Replies are matched by the message
    they answer, not by their sender: an error reply the SuperLink writes for a node that left the
    federation (node unavailable: it stopped sending heartbeats) comes from the SuperLink itself. A
    message the SuperLink refuses (its node left before it was sent) gets an error reply here.
    """
    ids = list(grid.push_messages(messages))  # same order as `messages`; "" or None for a message refused
    if len(ids) != len(messages):  # HttpGrid answers HTTP 413 with []; InMemoryGrid drops what it refuses
        raise FedharError(
            f"the SuperLink accepted {len(ids)} of {len(messages)} `{messages[0].metadata.message_type}` messages "
            "without saying which (Flower's log above says why; a deployment's HTTP 413 means the request was too "
            "large: sample fewer clients per round, federated.fraction_train)"
        )
    dst = {i: m.metadata.dst_node_id for i, m in zip(ids, messages, strict=True) if i}
    replies: dict[int, Message | None] = {
        m.metadata.dst_node_id: None if i else _refused(m) for i, m in zip(ids, messages, strict=True)
    }
    pending = set(dst)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(pending):
            answered = reply.metadata.reply_to_message_id
            if answered in pending:
                replies[dst[answered]] = reply
                pending.discard(answered)
        if not pending or (deadline is not None and time.monotonic() > deadline):
            break
        if stop is not None and stop.is_set():
            raise FedharError("the simulation engine stopped while clients were still training")
        time.sleep(poll_s)
    return replies


def _refused(message: Message) -> Message:
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


def _unusable(reply: Message | None, timeout: float | None) -> str | None:
    """Why a client's reply cannot be used (none came in time, or it is an error), or None."""
    if reply is None:
        return f"no reply within federated.round_timeout_s={timeout}"
    return _reply_error(reply)


def _reply_error(reply: Message) -> str | None:
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


# ---- the loop ------------------------------------------------------------------------------------


class RoundLoop:
    """State of one federated run on the server."""

    def __init__(self, grid: Grid, job: ServerJob):
        self.grid, self.job, self.cfg, self.run = grid, job, job.cfg, job.run
        self.strategy: Strategy = make_strategy(self.cfg)
        # what checkpoints record of the training data (fedhar evaluate warns on it); in a simulation the clients
        # hold the config's training split, deployed devices' own subjects are unknown here (and the server's
        # folder needs only the held-out subjects)
        self.provenance = {"synthetic_data": self.cfg.data.dataset == "synthetic"}
        if job.simulated:
            train, self.val, self.test = subject_split(self.cfg)
            self.provenance["train_subjects"] = sorted(set(train.subject.tolist()), key=natural_key)
        else:
            self.val, self.test = held_out_split(self.cfg)
        reference = self.val if len(self.val) else self.test
        if len(reference) == 0:
            raise ConfigError("federated runs evaluate centrally on held-out subjects: data.split must leave "
                              "validation or test subjects")  # fmt: skip
        spec = DataSpec(reference.layout, reference.window_len, reference.sample_rate, list(reference.label_names),
                        Normalizer.identity(reference.num_channels), windowing_record(self.cfg.data))  # fmt: skip
        self.model: HARNet = build_model(self.cfg.model, spec, self.cfg.seed)
        self.spec = expected_spec(self.model)
        self.global_state = get_trainable_state(self.model)
        self.rows: list[dict] = []
        self.client_rows: list[dict] = []
        self.federation = Federation(stage=-1)
        self.described: set[int] = set()  # nodes asked at the current stage (with or without data)
        self.failed: dict[int, tuple[int, int]] = {}  # setup answer failed: node → (failures in a row, next round)
        self.online: set[int] | None = None  # connected nodes, as of the start of the round
        self.setup_errors: list[str] = []
        self.weight_cap = MAX_CLIENT_WINDOWS  # federated.max_weight_ratio × the median window count, set at setup
        self.calibration: PairCalibration | None = None  # train.client_calibration, fitted at setup
        self.calibrated: dict[str, dict] = {}  # the latest calibrated scores with per-subject reports

    # -- setup ------------------------------------------------------------------------------------
    def describe(self, stage: int, rnd: int, fit_normalizer: bool, late_nodes: list[int] | None = None) -> None:
        """Ask every node what it holds at ``stage`` (before round ``rnd``); fit the global normaliser from their
        moments if asked.

        With ``late_nodes`` only those nodes are asked (they connected after the federation was described)
        and the clients among them join the current federation. A node whose earlier answer failed is asked
        only once its back-off has passed, and waited for at most ``DESCRIBE_RETRY_TIMEOUT_S``.
        """
        fed = self.cfg.federated
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
            if messages:
                replies.update(_send(self.grid, messages, timeout, self.job.stop, self.job.poll_interval_s))
        clients, failures, parts, pair_parts, answered = [], {}, {}, {}, set()
        with_moments = fit_normalizer and self.cfg.data.normalize
        with_pair = fit_normalizer and bool(self.cfg.train.client_calibration)
        for node, reply in replies.items():
            if reply is None:
                waited = f"{retry_timeout} s (a retry)" if node in retry else f"round_timeout_s={fed.round_timeout_s}"
                failures[node] = f"no answer within {waited}"
                continue
            if (err := _reply_error(reply)) is not None:
                failures[node] = err
                continue
            try:
                info, part, pair_part = self._check_description(node, reply, with_moments, with_pair)
            except (FedharError, KeyError, TypeError, ValueError) as e:
                failures[node] = f"setup answer rejected ({e})"
                continue
            answered.add(node)
            if info is None:
                continue
            clients.append(info)
            parts[node], pair_parts[node] = part, pair_part
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
        self.setup_errors = errors
        if late_nodes:
            self._join(clients, errors)
            return
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
        self.federation = Federation(stage, clients)
        if fit_normalizer:
            if self.cfg.data.normalize:
                # each client's moments count as much as its capped weight: an inflated count cannot set the normaliser
                totals = sum(parts[c.node_id] * (c.weight / c.num_examples) for c in clients)
                ch = (len(totals) - 1) // 2
                norm = Normalizer.from_moments(totals[0], totals[1 : 1 + ch], totals[1 + ch :])
            else:
                norm = Normalizer.identity(self.model.data.layout.num_channels)
            self.model.set_normalizer(norm)
            if self.cfg.train.client_calibration:
                pair_totals = None
                for c in clients:
                    if (pair_part := pair_parts[c.node_id]) is not None:
                        pair_totals = pair_part if pair_totals is None else {k: v + pair_part[k]
                                                                             for k, v in pair_totals.items()}  # fmt: skip
                self.calibration = fit_calibration(pair_totals, self.cfg.train.client_calibration)
        self.write_federation()

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

    def _check_description(self, node: int, reply: Message, with_moments: bool, with_pair: bool
                           ) -> tuple[ClientInfo | None, np.ndarray | None, dict[str, np.ndarray] | None]:  # fmt: skip
        """A client's setup answer, checked: (client, [count, sums, sums of squares], calibration-pair cue sums);
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
        pair = self._check_pair_statistics(reply, info, n) if with_pair else None
        if not with_moments:
            return info, None, pair
        channels = self.model.data.layout.num_channels
        expected = {"sum": ((channels,), np.dtype("float64")), "sum_sq": ((channels,), np.dtype("float64"))}
        m = record_to_state(reply.content["moments"], expected, where=f"client {info.name}'s moments")
        count = metrics.get("num-values", 0.0)  # finite: check_metrics; the sums: record_to_state
        check_moments(count, m["sum"], m["sum_sq"], windows=n, window_len=self.model.data.window_len)
        return info, np.concatenate([[count], m["sum"], m["sum_sq"]]), pair

    def _check_pair_statistics(self, reply: Message, info: ClientInfo, windows: int) -> dict[str, np.ndarray]:
        """The calibration pair's posture-cue sums a client sent at setup, checked before they are summed."""
        if PAIR_STATISTICS not in reply.content:
            raise FedharError("sent no calibration-pair statistics although train.client_calibration is set")
        d = num_posture_cues(self.model.data.layout)
        f64 = np.dtype("float64")
        expected = {"count": ((2,), f64), "sum": ((2, d), f64), "outer": ((2, d, d), f64)}
        stats = record_to_state(reply.content[PAIR_STATISTICS], expected, where=f"client {info.name}'s pair statistics")
        count = stats["count"]
        if (count < 0).any() or (count != np.round(count)).any() or count.sum() > windows:
            raise FedharError(f"client {info.name}'s pair statistics are impossible (counts {count.tolist()} "
                              f"of {windows} windows)")  # fmt: skip
        return stats

    def _join(self, clients: list[ClientInfo], errors: list[str]) -> None:
        """Late nodes join the federation; a known name on a new node id is that client come back."""
        by_name = {c.name: c for c in self.federation.clients}
        for c in clients:
            old = by_name.get(c.name)
            if old is not None and old.node_id in self.online:
                errors.append(f"node {c.node_id}: client name {c.name} is already used by connected node {old.node_id}")
                continue
            c.weight = min(c.num_examples, self.weight_cap)  # the federation's cap: a late claim cannot raise it
            by_name[c.name] = c
            self._say(f"client {c.name} {'rejoined' if old else 'joined'} ({c.num_examples} windows)")
        for err in errors:
            self._say(f"[yellow]a joining node failed: {err}[/]")
        self.federation = Federation(self.federation.stage, sorted(by_name.values(), key=lambda c: c.name))
        self.write_federation()

    def write_federation(self) -> None:
        self.run.write_json("federation.json", {
            "stage": self.federation.stage,
            "clients": [{"name": c.name, "windows": c.num_examples, "weight": c.weight,
                         **({"claimed_name": c.claimed} if c.claimed else {})} for c in self.federation.clients],
            "weight_cap": self.weight_cap,
            "failed_nodes": self.setup_errors,
            "normalizer": self.model.data.normalizer.to_json(),
            "normalizer_source": "client moments (sums and sums of squares)" if self.cfg.data.normalize else "identity",
        })  # fmt: skip

    def _say(self, text: str) -> None:
        if self.job.progress:
            console.print(text, soft_wrap=True)  # one line per event, also in log files

    def refresh_membership(self, rnd: int) -> None:
        """Which nodes are connected now; describe the ones not yet asked at this stage (late joiners), and
        those whose failed answer's back-off has passed.

        Waits up to ``federated.client_wait_s`` while fewer than ``min_clients`` clients are connected.
        """
        fed = self.cfg.federated
        deadline = time.monotonic() + fed.client_wait_s
        while True:
            self.online = set(self.grid.get_node_ids())
            self.failed = {n: f for n, f in self.failed.items() if n in self.online}  # one that left comes back fresh
            new = sorted(n for n in self.online - self.described if self.failed.get(n, (0, 0))[1] <= rnd)
            if new:
                self.describe(self.federation.stage, rnd, fit_normalizer=False, late_nodes=new)
            connected = [c for c in self.federation.clients if c.node_id in self.online]
            if len(connected) >= fed.min_clients or time.monotonic() > deadline:
                return
            if self.job.stop is not None and self.job.stop.is_set():
                raise FedharError("the simulation engine stopped while waiting for clients")
            time.sleep(max(self.job.poll_interval_s, 1.0))

    # -- resume -----------------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the last completed round's state; returns that round (0: nothing to resume)."""
        rounds_path = self.run.file("rounds.json")
        if not rounds_path.is_file():
            return 0
        data = json.loads(rounds_path.read_text())
        self.rows, self.client_rows = data["rounds"], data.get("clients", [])
        if not self.rows:
            return 0
        last = int(self.rows[-1]["round"])
        folder = self.run.file(STATE_DIR) / f"round-{last:04d}"
        info, state = read_checkpoint(folder)
        set_trainable_state(self.model, state, where=str(folder))
        self.model.set_normalizer(Normalizer.from_json(info["data"]["normalizer"]))
        if "client_calibration" in info:
            self.calibration = PairCalibration.from_json(info["client_calibration"])
        self.global_state = state
        server_state = folder / SERVER_STATE_FILE
        self.strategy.load_server_state(load_file(str(server_state)) if server_state.is_file() else {})
        return last

    def save_round(self, rnd: int) -> None:
        """Round state into ``state/round-NNNN`` (temp folder renamed), then ``rounds.json``, then prune."""
        root = self.run.file(STATE_DIR)
        final = root / f"round-{rnd:04d}"
        tmp = root / f".round-{rnd:04d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(self.model, tmp, extra={"run": self.cfg.name, "seed": self.cfg.seed, "round": rnd,
                                                **self.calibration_record(), **self.provenance})  # fmt: skip
        server_state = self.strategy.server_state()
        if server_state:
            save_file({k: np.ascontiguousarray(v) for k, v in server_state.items()}, str(tmp / SERVER_STATE_FILE))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self.run.write_json("rounds.json", {"rounds": self.rows, "clients": self.client_rows})
        self.run.write_csv("rounds.csv", self.rows)
        self.run.write_csv("clients.csv", self.client_rows)
        for old in root.glob("round-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    # -- one round ---------------------------------------------------------------------------------
    def train_round(self, rnd: int) -> dict:
        t0 = time.perf_counter()
        fed_cfg = self.cfg.federated
        self.refresh_membership(rnd)
        chosen = sample_clients(self.federation, self.cfg, rnd, self.online)
        lr = round_lr(self.cfg, rnd)
        arrays = state_to_record(self.global_state)
        messages, down = [], {}
        for c in chosen:
            job = RoundJob(self.cfg, rnd, self.federation.stage, lr, client_seed(self.cfg.seed, rnd, c.name),
                           self.model.data.normalizer)  # fmt: skip
            msg = Message(RecordDict({"config": job.to_record(), "arrays": arrays}), dst_node_id=c.node_id,
                          message_type="train", group_id=str(rnd))  # fmt: skip
            messages.append(msg)
            down[c.node_id] = record_bytes(msg)
        replies = _send(self.grid, messages, fed_cfg.round_timeout_s, self.job.stop, self.job.poll_interval_s)
        by_node = {c.node_id: c for c in chosen}
        updates, errors, rejected, clients = [], [], [], []
        for node, reply in replies.items():
            info = by_node[node]
            if (why := _unusable(reply, fed_cfg.round_timeout_s)) is not None:
                errors.append(f"{info.name}: {why}")
                continue
            try:
                n, metrics, state = self.check_update(reply, info)
            except (FedharError, AttributeError, KeyError, TypeError, ValueError) as e:
                # a malformed or hostile reply: left out of this round's aggregate, the round goes on
                rejected.append(f"{info.name}: update rejected: {e}")
                continue
            if n == 0:
                continue
            updates.append(ClientUpdate(info.name, state, info.weight))
            clients.append({"round": rnd, "client": info.name, "num_examples": n, "weight": info.weight,
                            "bytes_down": down[node],
                            "bytes_up": record_bytes(reply), **metrics})  # fmt: skip
        updates.sort(key=lambda u: u.name)  # replies arrive in any order; sums must not depend on it
        clients.sort(key=lambda c: c["client"])
        updates, clipped = self.bound_updates(updates, clients, rejected)
        for problem in errors + rejected:
            self._say(f"[yellow]round {rnd}: {problem}[/]")
        if len(updates) < fed_cfg.min_clients:
            detail = (errors + rejected)[0] if errors or rejected else "no client returned an update"
            raise FedharError(
                f"round {rnd}: {len(updates)} of {len(chosen)} clients returned an update, "
                f"fewer than federated.min_clients={fed_cfg.min_clients} ({detail})"
            )
        diagnostics = {}
        pairs = lora_pairs(list(self.global_state))
        if pairs:
            scaling = self.cfg.model.lora.alpha / self.cfg.model.lora.r
            diagnostics["lora_product_gap"] = product_gap(updates, pairs, scaling)
        new_state, extra = self.strategy.aggregate(self.global_state, updates)
        diagnostics.update(extra)
        set_trainable_state(self.model, new_state, where=f"round {rnd} aggregate")
        self.global_state = new_state
        local_eval, eval_errors = {}, None
        if fed_cfg.client_val_fraction > 0:
            local_eval, eval_errors = self.evaluate_clients(rnd, chosen, lr)
        for row in clients:
            row.update(local_eval.get(row["client"], {}))
        row = {"round": rnd, "stage": self.federation.stage, "lr": lr, "clients_sampled": len(chosen),
               "clients_updated": len(updates), "clients_failed": len(errors), "clients_rejected": len(rejected),
               "clients_clipped": clipped,
               **self.central_metrics()}  # fmt: skip
        if eval_errors is not None:
            row["client_eval_errors"] = eval_errors
        total_down = sum(c["bytes_down"] for c in clients) + sum(v["eval_bytes_down"] for v in local_eval.values())
        total_up = sum(c["bytes_up"] for c in clients) + sum(v["eval_bytes_up"] for v in local_eval.values())
        row.update(
            bytes_down=total_down,
            bytes_up=total_up,
            bytes_total=total_down + total_up,
            bytes_per_client=(total_down + total_up) / max(1, len(clients)),
            train_seconds_max=max(c.get("train_seconds", 0.0) for c in clients),
            **diagnostics,
            round_seconds=round(time.perf_counter() - t0, 3),
            errors=errors,
            rejected=rejected,
        )
        self.client_rows.extend(clients)
        return row

    def bound_updates(self, updates: list[ClientUpdate], clients: list[dict], rejected: list[str]
                      ) -> tuple[list[ClientUpdate], int]:  # fmt: skip
        """Bound each update's distance from the global state (``federated.update_norm_bound``).

        An update passes the server's checks when it has the right tensors with finite values, yet one
        scaled ×1e6 (or zeroed, or sign-flipped and scaled) would still decide a plain average. Its
        delta's L2 norm (over all trainable tensors) is compared with ``update_norm_bound`` × the round's
        median norm: above it the delta is scaled down to the bound (``clip``) or the update is left out
        (``reject``), with the reason. The median is the honest clients' scale as long as most clients are
        honest; with two clients it is not (their mean). Norms and scales go to ``clients.csv``.
        Returns the updates to aggregate and how many were clipped.
        """
        fed = self.cfg.federated
        if not updates:
            return updates, 0
        deltas = [{k: u.state[k].astype(np.float64) - self.global_state[k].astype(np.float64) for k in u.state}
                  for u in updates]  # fmt: skip
        norms = [float(np.sqrt(sum(float(np.sum(d**2)) for d in delta.values()))) for delta in deltas]
        rows = {row["client"]: row for row in clients}
        for u, norm in zip(updates, norms):
            rows[u.name]["update_norm"] = norm
        if fed.update_norm_bound is None or len(updates) < 2:
            return updates, 0
        bound = fed.update_norm_bound * float(np.median(norms))
        kept, clipped = [], 0
        for u, delta, norm in zip(updates, deltas, norms):
            if norm <= bound or norm == 0.0:
                kept.append(u)
                continue
            why = f"update norm {norm:.4g} exceeds {fed.update_norm_bound:g} x the round's median ({bound:.4g})"
            if fed.update_norm_action == "reject":
                rejected.append(f"{u.name}: update rejected: {why}")
                clients.remove(rows[u.name])
                continue
            scale = bound / norm
            state = {k: (self.global_state[k].astype(np.float64) + scale * d).astype(u.state[k].dtype)
                     for k, d in delta.items()}  # fmt: skip
            kept.append(ClientUpdate(u.name, state, u.num_examples))
            rows[u.name]["update_scale"] = scale
            clipped += 1
            self._say(f"[yellow]{u.name}: {why}: clipped to it[/]")
        return kept, clipped

    def check_update(self, reply: Message, info: ClientInfo) -> tuple[int, dict[str, float], dict[str, np.ndarray]]:
        """A client's training reply, checked before it may touch the global model: (examples, metrics, state).

        The arrays must be exactly the trainable tensors (names, shapes, dtypes) with finite values,
        the metrics finite numbers, and the number of examples the one the client described.
        """
        n, metrics = check_metrics(reply)
        if n == 0:
            return 0, metrics, {}
        if n != info.num_examples:
            raise FedharError(f"claims {n} training windows, it described {info.num_examples} at setup")
        if "arrays" not in reply.content:
            raise FedharError("the reply carries no trainable tensors")
        state = record_to_state(reply.content["arrays"], self.spec, where="the update")
        return n, metrics, state

    def evaluate_clients(self, rnd: int, chosen: list[ClientInfo], lr: float) -> tuple[dict[str, dict], list[str]]:
        """Client-side evaluation of the new global model on each sampled client's local held-out windows.

        Returns ({client: eval_* bytes and client_eval_* metrics}, why some client's evaluation is missing).
        A reply is checked as an update's metrics are; a bad one is left out, never failing the round.
        """
        arrays = state_to_record(self.global_state)
        job = RoundJob(self.cfg, rnd, self.federation.stage, lr, self.cfg.seed, self.model.data.normalizer,
                       self.calibration.to_json() if self.calibration is not None else None)  # fmt: skip
        messages = [Message(RecordDict({"config": job.to_record(), "arrays": arrays}), dst_node_id=c.node_id,
                            message_type="evaluate", group_id=str(rnd)) for c in chosen]  # fmt: skip
        down = {m.metadata.dst_node_id: record_bytes(m) for m in messages}
        out, problems = {}, []
        by_node = {c.node_id: c for c in chosen}
        timeout = self.cfg.federated.round_timeout_s
        replies = _send(self.grid, messages, timeout, self.job.stop, self.job.poll_interval_s)
        for node, reply in replies.items():
            info = by_node[node]
            if (why := _unusable(reply, timeout)) is not None:
                problems.append(f"{info.name}: evaluation: {why}")
                continue
            result = {"eval_bytes_down": down[node], "eval_bytes_up": record_bytes(reply)}
            out[info.name] = result
            try:
                n, metrics = check_metrics(reply)
            except (FedharError, TypeError, ValueError) as e:
                problems.append(f"{info.name}: evaluation rejected: {e}")
                continue
            if n > 0:
                result.update({f"client_eval_{k}": v for k, v in metrics.items()})
        problems.sort()
        for problem in problems:
            self._say(f"[yellow]round {rnd}: {problem}[/]")
        return out, problems

    def central_metrics(self) -> dict:
        """The global model on the held-out subjects, and how long the server took to score it.

        With a calibration, each held-out subject also re-splits the pair on its own windows, as a
        client would (``{split}_calibrated_*``; the full scores stay in ``self.calibrated``).
        """
        t0 = time.perf_counter()
        out = {}
        for split, ws in (("val", self.val), ("test", self.test)):
            if len(ws):
                logits = predict_logits(self.model, ws.x, self.cfg.train.eval_batch_size)
                m = metrics_from_logits(logits, ws)
                out.update({f"{split}_{k}": m[k] for k in ("accuracy", "macro_f1", "loss")})
                if self.calibration is not None:
                    self.calibrated[split] = self.calibration.score(ws, logits.argmax(axis=1))
                    out.update({f"{split}_calibrated_{k}": self.calibrated[split][k] for k in ("accuracy", "macro_f1")})
        out["central_eval_seconds"] = round(time.perf_counter() - t0, 3)
        return out

    def calibration_record(self) -> dict:
        """What a checkpoint stores of the calibration (``fedhar evaluate --calibrate`` reads it back)."""
        return {} if self.calibration is None else {"client_calibration": self.calibration.to_json()}


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


def fit_calibration(pair_totals: dict[str, np.ndarray] | None, pair: list[str]) -> PairCalibration:
    """The pair's calibration direction from the clients' summed cue statistics."""
    if pair_totals is None:
        raise FedharError(f"no client sent statistics for the {pair} calibration (train.client_calibration)")
    return PairCalibration.from_statistics(pair_totals, pair)


def run_federation(grid: Grid, job: ServerJob) -> dict:
    """Run (or resume) the federation ``job`` describes; returns the summary written to ``metrics.json``."""
    t_start = time.perf_counter()
    cfg = job.cfg
    loop = RoundLoop(grid, job)
    start = loop.restore() if job.resume else 0
    loop.describe(stage_of_round(cfg, start + 1), start + 1, fit_normalizer=start == 0)
    counts = parameter_counts(loop.model)
    if job.progress:
        console.print(
            f"[bold]{cfg.federated.strategy}[/]: {len(loop.federation.clients)} clients, "
            f"rounds {start + 1}..{cfg.federated.rounds}, "
            f"{counts['trainable']:,} trainable of {counts['total']:,} parameters"
        )
    for rnd in range(start + 1, cfg.federated.rounds + 1):
        stage = stage_of_round(cfg, rnd)
        if stage != loop.federation.stage:  # the data changed: ask again who holds what
            loop.describe(stage, rnd, fit_normalizer=False)
            if job.progress:
                console.print(f"stage {stage}: {len(loop.federation.clients)} clients hold data")
        if job.progress:
            with console.status(f"round {rnd}/{cfg.federated.rounds}: {cfg.federated.strategy} on "
                                f"{len(loop.federation.clients)} clients…"):  # fmt: skip
                row = loop.train_round(rnd)
        else:
            row = loop.train_round(rnd)
        loop.rows.append(row)
        loop.save_round(rnd)
        if job.progress:
            console.print(_progress_line(row, cfg.federated.rounds), soft_wrap=True)
    set_trainable_state(loop.model, loop.global_state, where="final state")
    save_checkpoint(loop.model, job.run.file("checkpoint"), extra={
        "run": cfg.name, "seed": cfg.seed, "strategy": cfg.federated.strategy, "rounds": cfg.federated.rounds,
        **loop.calibration_record(), **loop.provenance,
    })  # fmt: skip
    summary = summarize(cfg, loop.rows, loop.model, loop.federation.clients, time.perf_counter() - t_start)
    if loop.calibration is not None:  # a client-side step: reported beside the per-window figures
        if not loop.calibrated:  # resumed after the last round: this process has not scored the model yet
            loop.central_metrics()
        summary["client_calibrated"] = loop.calibrated
        summary["client_calibration"] = loop.calibration.to_json()
    job.run.write_json("metrics.json", summary)
    if loop.rows:
        plot_rounds(loop.rows, job.run.path, title=f"{cfg.name}: {cfg.federated.strategy}"
                    + (" (SYNTHETIC data)" if cfg.data.dataset == "synthetic" else ""))  # fmt: skip
    return summary


def _progress_line(row: dict, rounds: int) -> str:
    """One short line per round (fits an 80-column terminal)."""
    parts = [f"round {row['round']:>3}/{rounds}"]
    for split in ("val", "test"):
        if f"{split}_macro_f1" in row:
            parts.append(f"{split} F1 {row[f'{split}_macro_f1']:.3f}")
    if "test_calibrated_macro_f1" in row:
        parts.append(f"calibrated {row['test_calibrated_macro_f1']:.3f}")
    split = "test" if "test_accuracy" in row else "val"
    parts.append(f"{split} acc {row[f'{split}_accuracy']:.3f}")
    parts.append(f"{row['bytes_total'] / 1e6:.1f} MB")
    parts.append(f"{row['round_seconds']:.1f} s")
    if row["clients_failed"]:
        parts.append(f"[yellow]{row['clients_failed']} failed[/]")
    if row.get("clients_rejected"):
        parts.append(f"[yellow]{row['clients_rejected']} rejected[/]")
    return "  ".join(parts)
