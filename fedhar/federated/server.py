"""The server side: setup round, then R rounds of sample → train → aggregate → evaluate centrally → checkpoint.

Runs as a Flower ``ServerApp`` main (``server/app.py``, and ``fedhar simulate`` through the same
factory). The round loop talks to clients only through Flower messages on the ``Grid``:

* **setup** (``query.describe``, every node): each client answers with its name, its number of
  training windows and per-channel sums / sums of squares of its windows; the server fits the
  global input normaliser from those moments (no raw window leaves a client) and stores it
  with every checkpoint.
* **round r** (``train``): a seeded sample of the clients that hold data gets the global
  trainable tensors, the round's learning rate and a per-client seed; replies carry the new
  tensors and the number of examples; the strategy aggregates; the server scores the global
  model on the validation and test subjects (never seen by clients) and checkpoints.
* optional client-side evaluation (``evaluate``) on each client's local held-out windows.

Which data clients hold is named by a *stage* sent with every message; clients are
described again whenever the stage changes, so clients may come and go between rounds.

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

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from safetensors.numpy import load_file, save_file

from fedhar.cli.common import console
from fedhar.config import ExperimentConfig, load_config
from fedhar.data.preprocess import Normalizer
from fedhar.errors import CheckpointError, ConfigError, FedharError
from fedhar.federated.client import MESSAGE_DESCRIBE
from fedhar.federated.data import stage_of_round, subject_split
from fedhar.federated.records import RoundJob, record_bytes, record_to_state, state_to_record
from fedhar.federated.report import plot_rounds, summarize
from fedhar.federated.strategies import ClientUpdate, Strategy, check_strategy, lora_pairs, make_strategy, product_gap
from fedhar.model.har_model import DataSpec, HARNet, build_model, parameter_counts
from fedhar.model.state import expected_spec, get_trainable_state, read_checkpoint, save_checkpoint, set_trainable_state
from fedhar.results.run import RunDir
from fedhar.training.loop import evaluate

STATE_DIR = "state"
SERVER_STATE_FILE = "server.safetensors"
NODE_WAIT_S = 120.0
PULL_INTERVAL_S = 0.05


@dataclass
class ServerJob:
    """What the server main runs: the resolved config, the run folder, and how the federation was started."""

    cfg: ExperimentConfig
    run: RunDir
    resume: bool = False
    expected_nodes: int | None = None  # simulation: every virtual node registers before the first round
    progress: bool = True
    stop: threading.Event | None = None  # set when the engine under the server has ended (the loop stops)


@dataclass
class ClientInfo:
    node_id: int
    name: str
    num_examples: int


@dataclass
class Federation:
    """The server's view of who is out there at the current stage."""

    stage: int
    clients: list[ClientInfo] = field(default_factory=list)  # sorted by name, only those holding data

    def by_node(self) -> dict[int, ClientInfo]:
        return {c.node_id: c for c in self.clients}


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
    """A relative ``config-file`` is looked up in the working directory, then in the app's own folder."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.is_file():
        return path
    return Path(__file__).resolve().parents[2] / path


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


def sample_clients(fed: Federation, cfg: ExperimentConfig, rnd: int) -> list[ClientInfo]:
    """``fraction_train`` of the clients holding data (at least ``min_clients``), seeded by round."""
    available = fed.clients
    k = max(int(len(available) * cfg.federated.fraction_train), cfg.federated.min_clients)
    if k > len(available):
        raise FedharError(
            f"round {rnd}: {len(available)} clients hold data at stage {fed.stage}, "
            f"fewer than federated.min_clients={cfg.federated.min_clients}"
        )
    rng = np.random.default_rng([cfg.seed, rnd])
    chosen = sorted(rng.choice(len(available), size=k, replace=False).tolist())
    return [available[i] for i in chosen]


def _send(grid: Grid, messages: list[Message], timeout: float | None, stop: threading.Event | None) -> list[Message]:
    """Push messages, pull replies until all arrived, ``timeout`` passed, or the engine stopped (``stop``)."""
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or (deadline is not None and time.monotonic() > deadline):
            break
        if stop is not None and stop.is_set():
            raise FedharError("the simulation engine stopped while clients were still training")
        time.sleep(PULL_INTERVAL_S)
    return replies


def _reply_error(reply: Message) -> str | None:
    if reply.has_error():
        return str(reply.error.reason).strip().splitlines()[-1][:300]
    return None


def wait_for_nodes(grid: Grid, expected: int | None, minimum: int, stop: threading.Event | None = None) -> list[int]:
    """Node ids once the federation is up (simulation registers its virtual nodes right after start)."""
    deadline = time.monotonic() + NODE_WAIT_S
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
            raise FedharError(f"only {len(nodes)} of {want} client nodes connected within {NODE_WAIT_S:.0f} s")
        time.sleep(0.2)


# ---- the loop ------------------------------------------------------------------------------------


class RoundLoop:
    """State of one federated run on the server."""

    def __init__(self, grid: Grid, job: ServerJob):
        self.grid, self.job, self.cfg, self.run = grid, job, job.cfg, job.run
        self.strategy: Strategy = make_strategy(self.cfg)
        _, self.val, self.test = subject_split(self.cfg)
        reference = self.val if len(self.val) else self.test
        if len(reference) == 0:
            raise ConfigError("federated runs evaluate centrally on held-out subjects: data.split must leave "
                              "validation or test subjects")  # fmt: skip
        spec = DataSpec(reference.layout, reference.window_len, reference.sample_rate, list(reference.label_names),
                        Normalizer.identity(reference.num_channels))  # fmt: skip
        self.model: HARNet = build_model(self.cfg.model, spec, self.cfg.seed)
        self.spec = expected_spec(self.model)
        self.global_state = get_trainable_state(self.model)
        self.rows: list[dict] = []
        self.client_rows: list[dict] = []
        self.federation = Federation(stage=-1)

    # -- setup ------------------------------------------------------------------------------------
    def describe(self, stage: int, fit_normalizer: bool) -> None:
        """Ask every node what it holds at ``stage``; fit the global normaliser from their moments if asked."""
        nodes = wait_for_nodes(self.grid, self.job.expected_nodes, self.cfg.federated.min_clients, self.job.stop)
        job = RoundJob(self.cfg, 0, stage, self.cfg.train.lr, self.cfg.seed, None)
        messages = [Message(RecordDict({"config": job.to_record()}), dst_node_id=n, message_type=MESSAGE_DESCRIBE)
                    for n in nodes]  # fmt: skip
        replies = _send(self.grid, messages, self.cfg.federated.round_timeout_s, self.job.stop)
        clients, errors, totals = [], [], None
        for reply in replies:
            if (err := _reply_error(reply)) is not None:
                errors.append(err)
                continue
            n = int(reply.content["metrics"]["num-examples"])
            if n == 0:
                continue
            clients.append(ClientInfo(reply.metadata.src_node_id, str(reply.content["client"]["name"]), n))
            if fit_normalizer and self.cfg.data.normalize:
                m = record_to_state(reply.content["moments"], where=f"client {clients[-1].name}'s moments")
                count = float(reply.content["metrics"]["num-values"])
                part = np.concatenate([[count], m["sum"], m["sum_sq"]])
                totals = part if totals is None else totals + part
        if errors and not clients:
            raise FedharError(f"every client failed the setup round; first error: {errors[0]}")
        clients.sort(key=lambda c: c.name)
        names = [c.name for c in clients]
        if len(set(names)) != len(names):
            raise FedharError(f"two nodes report the same client name ({names}); each node needs its own data")
        self.federation = Federation(stage, clients)
        if fit_normalizer:
            if self.cfg.data.normalize:
                c = (len(totals) - 1) // 2
                norm = Normalizer.from_moments(totals[0], totals[1 : 1 + c], totals[1 + c :])
            else:
                norm = Normalizer.identity(self.model.data.layout.num_channels)
            self.model.set_normalizer(norm)
        self.run.write_json("federation.json", {
            "stage": stage,
            "clients": [{"name": c.name, "windows": c.num_examples} for c in clients],
            "failed_nodes": errors,
            "normalizer": self.model.data.normalizer.to_json(),
            "normalizer_source": "client moments (sums and sums of squares)" if self.cfg.data.normalize else "identity",
        })  # fmt: skip

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
        save_checkpoint(self.model, tmp, extra={"run": self.cfg.name, "seed": self.cfg.seed, "round": rnd})
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
        chosen = sample_clients(self.federation, self.cfg, rnd)
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
        replies = _send(self.grid, messages, fed_cfg.round_timeout_s, self.job.stop)
        by_node = self.federation.by_node()
        updates, errors, clients = [], [], []
        for reply in replies:
            info = by_node.get(reply.metadata.src_node_id)
            name = info.name if info else f"node-{reply.metadata.src_node_id}"
            if (err := _reply_error(reply)) is not None:
                errors.append(f"{name}: {err}")
                continue
            metrics = dict(reply.content["metrics"])
            n = int(metrics.pop("num-examples"))
            if n == 0 or "arrays" not in reply.content:
                continue
            state = record_to_state(reply.content["arrays"], self.spec, where=f"client {name}'s update")
            updates.append(ClientUpdate(name, state, n))
            up = record_bytes(reply)
            clients.append({"round": rnd, "client": name, "num_examples": n,
                            "bytes_down": down[reply.metadata.src_node_id], "bytes_up": up,
                            **{k: float(v) for k, v in metrics.items()}})  # fmt: skip
        updates.sort(key=lambda u: u.name)  # replies arrive in any order; sums must not depend on it
        clients.sort(key=lambda c: c["client"])
        missing = len(chosen) - len(replies)
        if len(updates) < fed_cfg.min_clients:
            detail = errors[0] if errors else f"{missing} clients did not reply within federated.round_timeout_s"
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
        local_eval = self.evaluate_clients(rnd, chosen, lr) if fed_cfg.client_val_fraction > 0 else {}
        for row in clients:
            row.update(local_eval.get(row["client"], {}))
        row = {"round": rnd, "stage": self.federation.stage, "lr": lr, "clients_sampled": len(chosen),
               "clients_updated": len(updates), "clients_failed": len(errors) + missing,
               **self.central_metrics()}  # fmt: skip
        total_down = sum(c["bytes_down"] for c in clients) + sum(v["eval_bytes_down"] for v in local_eval.values())
        total_up = sum(c["bytes_up"] for c in clients) + sum(v["eval_bytes_up"] for v in local_eval.values())
        row.update(
            bytes_down=total_down,
            bytes_up=total_up,
            bytes_total=total_down + total_up,
            bytes_per_client=(total_down + total_up) / max(1, len(clients)),
            train_seconds_max=max(c["train_seconds"] for c in clients),
            **diagnostics,
            round_seconds=round(time.perf_counter() - t0, 3),
            errors=errors,
        )
        self.client_rows.extend(clients)
        return row

    def evaluate_clients(self, rnd: int, chosen: list[ClientInfo], lr: float) -> dict[str, dict]:
        """Client-side evaluation of the new global model on each sampled client's local held-out windows."""
        arrays = state_to_record(self.global_state)
        job = RoundJob(self.cfg, rnd, self.federation.stage, lr, self.cfg.seed, self.model.data.normalizer)
        messages = [Message(RecordDict({"config": job.to_record(), "arrays": arrays}), dst_node_id=c.node_id,
                            message_type="evaluate", group_id=str(rnd)) for c in chosen]  # fmt: skip
        down = {m.metadata.dst_node_id: record_bytes(m) for m in messages}
        out = {}
        by_node = self.federation.by_node()
        for reply in _send(self.grid, messages, self.cfg.federated.round_timeout_s, self.job.stop):
            info = by_node.get(reply.metadata.src_node_id)
            if info is None or _reply_error(reply) is not None:
                continue
            m = dict(reply.content["metrics"])
            result = {"eval_bytes_down": down[info.node_id], "eval_bytes_up": record_bytes(reply)}
            if int(m.pop("num-examples")) > 0:
                result.update({f"client_eval_{k}": float(v) for k, v in m.items()})
            out[info.name] = result
        return out

    def central_metrics(self) -> dict:
        out = {}
        for split, ws in (("val", self.val), ("test", self.test)):
            if len(ws):
                m = evaluate(self.model, ws, self.cfg.train.eval_batch_size)
                out.update({f"{split}_{k}": m[k] for k in ("accuracy", "macro_f1", "loss")})
        return out


def run_federation(grid: Grid, job: ServerJob) -> dict:
    """Run (or resume) the federation ``job`` describes; returns the summary written to ``metrics.json``."""
    t_start = time.perf_counter()
    cfg = job.cfg
    loop = RoundLoop(grid, job)
    start = loop.restore() if job.resume else 0
    if job.resume and start == 0 and loop.rows:
        raise CheckpointError(f"{job.run.path}: rounds.json lists rounds but no state to resume from")
    loop.describe(stage_of_round(cfg, start + 1), fit_normalizer=start == 0)
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
            loop.describe(stage, fit_normalizer=False)
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
            console.print(_progress_line(row, cfg.federated.rounds))
    set_trainable_state(loop.model, loop.global_state, where="final state")
    save_checkpoint(loop.model, job.run.file("checkpoint"), extra={
        "run": cfg.name, "seed": cfg.seed, "strategy": cfg.federated.strategy, "rounds": cfg.federated.rounds,
    })  # fmt: skip
    summary = summarize(cfg, loop.rows, loop.model, loop.federation.clients, time.perf_counter() - t_start)
    job.run.write_json("metrics.json", summary)
    if loop.rows:
        plot_rounds(loop.rows, job.run.path, title=f"{cfg.name}: {cfg.federated.strategy}")
    return summary


def _progress_line(row: dict, rounds: int) -> str:
    """One short line per round (fits an 80-column terminal)."""
    parts = [f"round {row['round']:>3}/{rounds}"]
    for split in ("val", "test"):
        if f"{split}_macro_f1" in row:
            parts.append(f"{split} F1 {row[f'{split}_macro_f1']:.3f}")
    split = "test" if "test_accuracy" in row else "val"
    parts.append(f"{split} acc {row[f'{split}_accuracy']:.3f}")
    parts.append(f"{row['bytes_total'] / 1e6:.1f} MB")
    parts.append(f"{row['round_seconds']:.1f} s")
    if row["clients_failed"]:
        parts.append(f"[yellow]{row['clients_failed']} failed[/]")
    return "  ".join(parts)
