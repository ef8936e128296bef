"""The server side: setup round, then R rounds of sample → train → aggregate → evaluate centrally → checkpoint.

Runs as a Flower ``ServerApp`` main (``server/app.py``, and ``fedhar simulate`` through the same
factory). The round loop talks to clients only through Flower messages on the ``Grid``:

* **setup** (``query.describe``, every node): each client answers with its name, its number of
  training windows and per-channel sums / sums of squares of its windows; the server fits the
  global input normaliser from those moments (no raw window leaves a client) and stores it
  with every checkpoint. With ``train.posthoc`` each client also sends the statistics its post-hoc
  adapter is fitted from (sums over its windows, fedhar/posthoc/); the server fits the adapter from
  their totals (what pooled data would give), scores it every round and stores it with every checkpoint.
  With ``federated.clients_per_round`` every node is asked once, at the run's set-up; a later stage
  asks only the nodes its rounds sample (``Membership.sample``).
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

import dataclasses
import json
import math
import os
import shlex
import shutil
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted
from safetensors.numpy import load_file, save_file

from fedhar import posthoc
from fedhar.config import ExperimentConfig, load_config
from fedhar.console import console
from fedhar.data.preprocess import Normalizer
from fedhar.data.recording import natural_key
from fedhar.errors import CheckpointError, ConfigError, FedharError
from fedhar.config import shipped_config
from fedhar.federated.membership import ClientInfo, Membership, sample_size
from fedhar.continual import olora, regularize, schedule
from fedhar.data.windows import WindowSet
from fedhar.federated.data import held_out_split, stage_of_round, subject_split
from fedhar.federated.transport import PULL_INTERVAL_S, check_metrics, send_and_collect, unusable_reason
from fedhar.federated.records import RoundJob, record_bytes, record_to_state, state_to_record
from fedhar.federated.report import plot_rounds, summarize
from fedhar.federated import aggregation
from fedhar.federated.aggregation import ClientUpdate, check_strategy, lora_pairs, product_gap
from fedhar.model.har_model import DataSpec, HARNet, build_model, parameter_counts, predict_logits, windowing_record
from fedhar.model.state import (check_state, expected_spec, get_trainable_state, init_from_checkpoint, read_checkpoint,
                                save_checkpoint, set_trainable_state)  # fmt: skip
from fedhar.results.run import RunDir
from fedhar.training.loop import metrics_from_logits

STATE_DIR = "state"
SERVER_STATE_FILE = "server.safetensors"
SERVER_STATE_JSON = "server.json"  # the strategy's scalar state and the privacy accountant
CONTINUAL_STATE_FILE = "continual.safetensors"  # anchor, importance, Fisher sum (l2 / ewc); past adapters (olora)


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


class RoundLoop:
    """State of one federated run on the server."""

    def __init__(self, grid: Grid, job: ServerJob):
        self.job, self.cfg, self.run = job, job.cfg, job.run
        self.attackers: set[str] = set()  # simulated poisoning (federated.attack): who attacks
        if self.cfg.federated.attack is not None:
            if not job.simulated:
                raise ConfigError("federated.attack is for simulation benchmarks only (fedhar simulate); remove it")
            from fedhar.federated.attacks import AttackedGrid, attacking_clients
            from fedhar.federated.data import simulated_partition

            parts, names = simulated_partition(self.cfg)
            self.attackers = set(attacking_clients(self.cfg, [n for n, part in zip(names, parts) if len(part)]))
            grid = AttackedGrid(grid, self.cfg, sorted(self.attackers))  # the attackers' replies are rewritten
        self.grid = grid
        self.strategy = None  # built once the federation's size is known (DP accounts per sampled client)
        self.num_sampled = 0
        self.saved_server_state: tuple[dict, dict] = ({}, {})  # from --resume, loaded into the strategy once built
        self.stopped: str | None = None  # why the run ended before federated.rounds (a privacy budget)
        # what checkpoints record of the training data (fedhar evaluate warns on it); in a simulation the clients
        # hold the config's training split, deployed devices' own subjects are unknown here (and the server's
        # folder needs only the held-out subjects)
        self.provenance = {"synthetic_data": self.cfg.data.dataset == "synthetic"}
        if job.simulated:
            train, self.val, self.test = subject_split(self.cfg)
            self.provenance["train_subjects"] = sorted(set(train.subject.tolist()), key=natural_key)
        else:
            train = None
            self.val, self.test = held_out_split(self.cfg)
        # continual: every stage's held-out domain is scored every round; val_* / test_* are on all of them
        self.domains: list[schedule.Domain] | None = None
        self.continual: dict = {"initial": None, "after_stage": {}}  # the accuracy matrix's rows, by stage
        self.anchor: dict[str, np.ndarray] | None = None  # l2 / ewc: the global tensors at the previous stage's end
        self.importance: dict[str, np.ndarray] | None = None  # ewc: their normalised Fisher
        self.fisher_sum: dict[str, np.ndarray] | None = None  # ewc: the stages' Fisher estimates so far
        self.past_adapters: dict[str, np.ndarray] | None = None  # olora: the earlier stages' frozen adapters
        self.anchor_stage = 0  # the stage the anchor (or olora's new adapter) was set for
        if self.cfg.continual is not None:
            schedule.check_schedule(self.cfg, train, self.val, self.test)
            self.domains = schedule.domains(self.cfg, self.val, self.test)
            self.val, self.test = (_joined([getattr(d, split) for d in self.domains], fallback)
                                   for split, fallback in (("val", self.val), ("test", self.test)))  # fmt: skip
        reference = self.val if len(self.val) else self.test
        if len(reference) == 0:
            raise ConfigError("federated runs evaluate centrally on held-out subjects: data.split must leave "
                              "validation or test subjects")  # fmt: skip
        spec = DataSpec(reference.layout, reference.window_len, reference.sample_rate, list(reference.label_names),
                        Normalizer.identity(reference.num_channels), windowing_record(self.cfg.data))  # fmt: skip
        self.model: HARNet = build_model(self.cfg.model, spec, self.cfg.seed)
        # transfer (train.init_from): the initial global state starts from a trained checkpoint's tensors
        self.init_from = (init_from_checkpoint(self.model, self.cfg.train.init_from)
                          if self.cfg.train.init_from is not None else None)  # fmt: skip
        self.spec = expected_spec(self.model)
        # ewc: what a Fisher estimate, the Fisher sum and the importance hold (ewc_importance: product: each LoRA
        # layer's <layer>.delta_w [d_out, d_in] in place of its A and B)
        self.fisher_spec = regularize.importance_spec(self.model, regularize.product_importance(self.cfg))
        self.global_state = get_trainable_state(self.model)
        self.rows: list[dict] = []
        self.client_rows: list[dict] = []
        self.members = Membership(grid, job, self.model, self._say)
        self.posthoc_config = posthoc.configured(self.cfg)  # train.posthoc: how to fit it
        self.posthoc: posthoc.PostHocAdapter | None = None  # fitted at setup (or restored)
        self.posthoc_scores: dict[str, dict] = {}  # its latest scores on the held-out splits, with per-subject reports

    # -- setup ------------------------------------------------------------------------------------
    def describe(self, stage: int, rnd: int, fit_normalizer: bool) -> None:
        """Ask every node what it holds at ``stage``; at the start of a run, fit the global normaliser (and the
        post-hoc adapter) from the totals the clients sent."""
        totals = self.members.describe(stage, rnd, fit=fit_normalizer)
        if totals is not None:
            if totals.moments is not None:
                m = totals.moments
                ch = (len(m) - 1) // 2
                norm = Normalizer.from_moments(m[0], m[1 : 1 + ch], m[1 + ch :])
            else:
                norm = Normalizer.identity(self.model.data.layout.num_channels)
            self.model.set_normalizer(norm)
            if self.posthoc_config is not None:
                self.posthoc = fit_posthoc(self.posthoc_config, totals.posthoc)
        self.members.write_federation()

    def _say(self, text: str) -> None:
        if self.job.progress:
            console.print(text, soft_wrap=True)  # one line per event, also in log files

    # -- resume -----------------------------------------------------------------------------------
    def restore(self) -> int:
        """Load the last completed round's state; returns that round (0: nothing to resume)."""
        rounds_path = self.run.file("rounds.json")
        if not rounds_path.is_file():
            return 0
        data = json.loads(rounds_path.read_text())
        self.rows, self.client_rows = data["rounds"], data.get("clients", [])
        self.continual = data.get("continual", self.continual)
        if not self.rows:
            return 0
        last = int(self.rows[-1]["round"])
        folder = self.run.file(STATE_DIR) / f"round-{last:04d}"
        info, state = read_checkpoint(folder)
        set_trainable_state(self.model, state, where=str(folder))
        self.model.set_normalizer(Normalizer.from_json(info["data"]["normalizer"]))
        if (stored := posthoc.stored_adapter(info)) is not None:
            self.posthoc = stored
        self.global_state = get_trainable_state(self.model)  # the model's tensor order (a file's may differ)
        arrays, extra = folder / SERVER_STATE_FILE, folder / SERVER_STATE_JSON
        self.saved_server_state = (load_file(str(arrays)) if arrays.is_file() else {},
                                   json.loads(extra.read_text()) if extra.is_file() else {})  # fmt: skip
        if (path := folder / CONTINUAL_STATE_FILE).is_file():
            saved = load_file(str(path))
            for part in ("anchor", "importance", "fisher_sum"):
                found = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith(f"{part}/")}
                order = self.global_state if part == "anchor" else self.fisher_spec
                if found and part != "anchor":  # names and shapes of this run's continual.ewc_importance
                    spec = {n: (shape, found[n].dtype if n in found else dtype)  # the Fisher sum is float64
                            for n, (shape, dtype) in self.fisher_spec.items()}  # fmt: skip
                    try:
                        check_state(spec, found, f"{path} ({part})")
                    except CheckpointError as e:
                        raise CheckpointError(f"{e}; was the run saved with another continual.ewc_importance "
                                              f"(this config: {self.cfg.continual.ewc_importance})?") from e
                setattr(self, part, {n: found[n] for n in order if n in found} if found else None)
            past = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("past_adapters/")}
            if past:  # in the order the server sends them (stage by stage, the model's tensor order)
                order = olora.past_spec(self.spec, olora.stages_in(past))
                past = {n: past[n] for n in order if n in past}
            self.past_adapters = past or None
            olora.attach(self.model, self.past_adapters)  # checks names and shapes against the model
        self.anchor_stage = int(self.saved_server_state[1].pop("anchor_stage", 0))  # fedhar's, not the strategy's
        return last

    def prepare_strategy(self) -> None:
        """Build the strategy for the federation's sample size (DP noise and ε depend on it), checked as one line
        (Krum's f against the sampled clients...), with the state a resumed run saved."""
        self.num_sampled = sample_size(len(self.members.federation.clients), self.cfg)
        check_strategy(self.cfg, self.num_sampled)
        self.strategy = aggregation.build_strategy(self.cfg, self.num_sampled)
        aggregation.load_server_state(self.strategy, *self.saved_server_state)

    def save_round(self, rnd: int) -> None:
        """Round state into ``state/round-NNNN`` (temp folder renamed), then ``rounds.json``, then prune."""
        root = self.run.file(STATE_DIR)
        final = root / f"round-{rnd:04d}"
        tmp = root / f".round-{rnd:04d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(self.model, tmp, extra={"run": self.cfg.name, "seed": self.cfg.seed, "round": rnd,
                                                **self.posthoc_record(), **self.provenance})  # fmt: skip
        arrays, extra = aggregation.server_state(self.strategy)
        if arrays:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / SERVER_STATE_FILE))
        parts = ("anchor", "importance", "fisher_sum", "past_adapters")
        kept = {f"{part}/{k}": np.ascontiguousarray(v) for part in parts
                for k, v in (getattr(self, part) or {}).items()}  # fmt: skip
        if kept:
            save_file(kept, str(tmp / CONTINUAL_STATE_FILE))
            extra = {**extra, "anchor_stage": self.anchor_stage}
        if extra:
            (tmp / SERVER_STATE_JSON).write_text(json.dumps(extra))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self.run.write_json("rounds.json", {"rounds": self.rows, "clients": self.client_rows,
                                            **({"continual": self.continual} if self.domains is not None else {})})
        self.run.write_csv("rounds.csv", self.rows)
        self.run.write_csv("clients.csv", self.client_rows)
        for old in root.glob("round-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    # -- one round ---------------------------------------------------------------------------------
    def train_round(self, rnd: int) -> dict:
        t0 = time.perf_counter()
        fed_cfg = self.cfg.federated
        self.members.refresh(rnd)
        chosen = self.members.sample(rnd)
        lr = round_lr(self.cfg, rnd)
        if fed_cfg.dp is not None and len(chosen) != self.num_sampled:
            raise FedharError(f"round {rnd}: federated.dp accounts for {self.num_sampled} sampled clients per round, "
                              f"but {len(chosen)} could be sampled (clients left or joined)")  # fmt: skip
        # the strategy's own configure_train: what it records (arrays sent, the privacy event) and adds to the config
        arrays, strategy_config = aggregation.configure(self.strategy, rnd, self.global_state,
                                                        [c.node_id for c in chosen])  # fmt: skip
        fisher = self.wants_fisher(rnd)
        continual_records = {}
        if self.anchor is not None:  # l2 / ewc: what the local penalty pulls toward
            continual_records[regularize.ANCHOR] = state_to_record(self.anchor)
            if self.importance is not None:
                continual_records[regularize.IMPORTANCE] = state_to_record(self.importance)
        continual_records.update(self.past_record())
        messages, down = [], {}
        for c in chosen:
            job = RoundJob(self.cfg, rnd, self.members.federation.stage, lr, client_seed(self.cfg.seed, rnd, c.name),
                           self.model.data.normalizer, fisher_windows=fisher)  # fmt: skip
            config = job.to_record()
            for key, value in strategy_config.items():
                config[key] = value
            msg = Message(RecordDict({"config": config, "arrays": arrays, **continual_records}),
                          dst_node_id=c.node_id, message_type="train", group_id=str(rnd))  # fmt: skip
            messages.append(msg)
            down[c.node_id] = record_bytes(msg)
        replies = send_and_collect(self.grid, messages, fed_cfg.round_timeout_s, self.job.stop, self.job.poll_interval_s)
        by_node = {c.node_id: c for c in chosen}
        updates, errors, rejected, clients, estimates = [], [], [], [], {}
        for node, reply in replies.items():
            info = by_node[node]
            if (why := unusable_reason(reply, fed_cfg.round_timeout_s)) is not None:
                errors.append(f"{info.name}: {why}")
                continue
            try:
                n, metrics, state = self.check_update(reply, info)
                if fisher and n:
                    estimates[info.name] = (self.check_fisher(reply), info.weight)
            except (FedharError, AttributeError, KeyError, TypeError, ValueError) as e:
                # a malformed or hostile reply: left out of this round's aggregate, the round goes on
                rejected.append(f"{info.name}: update rejected: {e}")
                continue
            if n == 0:
                continue
            weight = 1 if fed_cfg.dp is not None else info.weight  # DP: every client counts the same (user-level)
            updates.append(ClientUpdate(info.name, state, weight, metrics))
            clients.append({"round": rnd, "client": info.name, "num_examples": n, "weight": weight,
                            "bytes_down": down[node],
                            "bytes_up": record_bytes(reply), **metrics})  # fmt: skip
        updates.sort(key=lambda u: u.name)  # replies arrive in any order; sums must not depend on it
        clients.sort(key=lambda c: c["client"])
        bounded = aggregation.bound_updates(self.global_state, updates, fed_cfg.update_norm_bound,
                                            fed_cfg.update_norm_action)  # fmt: skip
        updates = bounded.updates
        for row in clients:
            row["update_norm"] = bounded.norms[row["client"]]
            if row["client"] in bounded.scales:
                row["update_scale"] = bounded.scales[row["client"]]
                self._say(f"[yellow]{row['client']}: update norm {row['update_norm']:.4g} clipped to "
                          f"{fed_cfg.update_norm_bound:g} x the round's median[/]")  # fmt: skip
        rejected += [f"{name}: update rejected: {why}" for name, why in bounded.rejected.items()]
        if fisher:  # ewc: this stage's Fisher, from the clients whose update counts, added to the earlier stages'
            kept = [estimates[u.name] for u in sorted(updates, key=lambda u: u.name) if u.name in estimates]
            if (merged := regularize.merge_importance(kept)) is not None:
                self.fisher_sum = merged if self.fisher_sum is None else {
                    k: self.fisher_sum[k] + v for k, v in merged.items()}  # fmt: skip
        clients = [row for row in clients if row["client"] not in bounded.rejected]
        if self.attackers:
            for row in clients:
                row["attacker"] = row["client"] in self.attackers
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
        new_state, extra = aggregation.aggregate(self.strategy, rnd, self.global_state, updates, self.cfg.seed)
        diagnostics.update(extra)
        if new_state is None:  # the strategy declined (e.g. DP with fewer replies than it accounts for)
            diagnostics["aggregation_skipped"] = 1
            self._say(f"[yellow]round {rnd}: {fed_cfg.strategy} did not aggregate these {len(updates)} updates; "
                      "the global model stays as it was[/]")  # fmt: skip
        else:
            set_trainable_state(self.model, new_state, where=f"round {rnd} aggregate")
            self.global_state = new_state
        if (spent := aggregation.privacy_spent(self.strategy)) is not None:
            diagnostics.update(dp_epsilon=spent["epsilon"], dp_delta=spent["delta"])
        local_eval, eval_errors = {}, None
        if fed_cfg.client_val_fraction > 0:
            local_eval, eval_errors = self.evaluate_clients(rnd, chosen, lr)
        for row in clients:
            row.update(local_eval.get(row["client"], {}))
        row = {"round": rnd, "stage": self.members.federation.stage, "lr": lr, "clients_sampled": len(chosen),
               "clients_updated": len(updates), "clients_failed": len(errors), "clients_rejected": len(rejected),
               "clients_clipped": len(bounded.scales),
               **({"clients_attacking": sum(c.name in self.attackers for c in chosen)} if self.attackers else {}),
               **self.central_metrics(stage_end=self.stage_ending(rnd))}  # fmt: skip
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
        job = RoundJob(self.cfg, rnd, self.members.federation.stage, lr, self.cfg.seed, self.model.data.normalizer,
                       self.posthoc.record() if self.posthoc is not None else None)  # fmt: skip
        past = self.past_record()  # olora: the model scored has the earlier stages' adapters too
        messages = [Message(RecordDict({"config": job.to_record(), "arrays": arrays, **past}), dst_node_id=c.node_id,
                            message_type="evaluate", group_id=str(rnd)) for c in chosen]  # fmt: skip
        down = {m.metadata.dst_node_id: record_bytes(m) for m in messages}
        out, problems = {}, []
        by_node = {c.node_id: c for c in chosen}
        timeout = self.cfg.federated.round_timeout_s
        replies = send_and_collect(self.grid, messages, timeout, self.job.stop, self.job.poll_interval_s)
        for node, reply in replies.items():
            info = by_node[node]
            if (why := unusable_reason(reply, timeout)) is not None:
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

    def central_metrics(self, stage_end: int | None = None) -> dict:
        """The global model on the held-out subjects, and how long the server took to score it.

        With a post-hoc adapter, each held-out subject also applies it to its own windows, as a client would
        (``{split}_<tag>_*``; the full scores stay in ``self.posthoc_scores``). With a continual
        schedule, also every stage's domain (``{split}_macro_f1@<stage>``); ``stage_end`` (a stage just ended,
        or -1 for the model before training) keeps that row of the accuracy matrix with per-class and
        per-subject scores.
        """
        t0 = time.perf_counter()
        out = {}
        for split, ws in (("val", self.val), ("test", self.test)):
            if len(ws):
                if self.domains is not None:
                    logits = self.score_domains(split, out, stage_end)
                else:
                    logits = predict_logits(self.model, ws.x, self.cfg.train.eval_batch_size)
                m = metrics_from_logits(logits, ws)
                out.update({f"{split}_{k}": m[k] for k in ("accuracy", "macro_f1", "loss")})
                if self.posthoc is not None:
                    scored = self.posthoc_scores[split] = self.posthoc.score(ws, logits.argmax(axis=1))
                    out.update({f"{split}_{self.posthoc.tag}_{k}": scored[k] for k in ("accuracy", "macro_f1")})
        out["central_eval_seconds"] = round(time.perf_counter() - t0, 3)
        return out

    def score_domains(self, split: str, out: dict, stage_end: int | None) -> np.ndarray:
        """Score every stage's domain of ``split`` into ``out``; returns the logits of all of them, in the order of
        ``self.val`` / ``self.test`` (their concatenation). At a stage end the row is kept in ``self.continual``."""
        logits_all, row = [], {}
        for domain in self.domains:
            ws = getattr(domain, split)
            if not len(ws):
                continue
            logits = predict_logits(self.model, ws.x, self.cfg.train.eval_batch_size)
            logits_all.append(logits)
            m = metrics_from_logits(logits, ws, by="subject" if stage_end is not None else None)
            out[f"{split}_macro_f1@{domain.name}"] = m["macro_f1"]
            out[f"{split}_accuracy@{domain.name}"] = m["accuracy"]
            if stage_end is not None:
                row[domain.name] = {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
                                    "per_class_f1": {c: m["per_class_f1"].get(c) for c, n in m["support"].items() if n},
                                    "by_subject": {k: v["macro_f1"] for k, v in m["by_subject"].items()}}  # fmt: skip
        if stage_end is not None and stage_end < 0:
            self.continual["initial"] = {**(self.continual["initial"] or {}), split: row}
        elif stage_end is not None:
            self.continual["after_stage"].setdefault(str(stage_end), {})[split] = row
        return np.concatenate(logits_all) if logits_all else np.zeros((0, len(self.model.data.label_names)), np.float32)

    # -- continual ---------------------------------------------------------------------------------
    def stage_ending(self, rnd: int) -> int | None:
        """The stage whose last round ``rnd`` is (its accuracy-matrix row is scored after it), else None."""
        if self.domains is None:
            return None
        ends = schedule.stage_last_rounds(self.cfg)
        return ends.index(rnd) if rnd in ends else None

    def wants_fisher(self, rnd: int) -> int:
        """ewc: in a stage's last round (but the last stage's) the clients estimate the Fisher: windows each."""
        cont = self.cfg.continual
        if cont is None or cont.method != "ewc":
            return 0
        end = self.stage_ending(rnd)
        return cont.fisher_windows if end is not None and end < schedule.num_stages(self.cfg) - 1 else 0

    def begin_stage(self, stage: int) -> None:
        """l2 / ewc: the global tensors at the end of the previous stage become the anchor (ewc: with the
        normalised sum of the stages' Fisher estimates as its importance). olora: the global adapter becomes the
        frozen adapter of the previous stage and a fresh one (B = 0: the same outputs) trains from here."""
        self.anchor_stage = stage
        method = self.cfg.continual.method if self.cfg.continual is not None else "naive"
        if method == "olora" and stage > 0:
            self.past_adapters = {**(self.past_adapters or {}), **olora.freeze_current(self.global_state, stage - 1)}
            self.global_state = olora.fresh_current(self.global_state, self.cfg.seed, stage)
            olora.attach(self.model, self.past_adapters)  # central evaluation scores with every adapter
            set_trainable_state(self.model, self.global_state, where=f"stage {stage}'s new adapter")
            return
        if method not in ("l2", "ewc") or stage == 0:
            return
        self.anchor = {k: v.copy() for k, v in self.global_state.items()}
        if method == "ewc":
            if self.fisher_sum is None:
                raise FedharError(f"stage {stage}: no client sent a Fisher estimate in the previous stage's last "
                                  "round, so ewc has no importance to weight the anchor with")  # fmt: skip
            self.importance = regularize.normalised(self.fisher_sum)

    def past_record(self) -> dict:
        """olora: the record of the earlier stages' frozen adapters every later train / evaluate message carries."""
        return {olora.PAST_ADAPTERS: state_to_record(self.past_adapters)} if self.past_adapters else {}

    def check_fisher(self, reply: Message) -> dict[str, np.ndarray]:
        """A client's Fisher estimate: the names and shapes of ``fisher_spec`` (the trainable tensors; with
        ``ewc_importance: product`` each LoRA layer's ``<layer>.delta_w``), finite, >= 0; scaled to mean 1 (each
        client says which values matter, not how much its own numbers weigh)."""
        if regularize.FISHER_REPLY not in reply.content:
            raise FedharError("ewc asked for a Fisher estimate and the reply carries none")
        estimate = record_to_state(reply.content[regularize.FISHER_REPLY], self.fisher_spec,
                                   where="the Fisher estimate")  # fmt: skip
        if any((v < 0).any() for v in estimate.values()):
            raise FedharError("the Fisher estimate has negative values (squared gradients cannot be negative)")
        return regularize.normalised(estimate)

    def posthoc_record(self) -> dict:
        """What a checkpoint stores of the post-hoc adapter (``fedhar evaluate`` / ``predict`` read it back)."""
        return {} if self.posthoc is None else {"posthoc": self.posthoc.record()}


def _joined(parts: list[WindowSet], fallback: WindowSet) -> WindowSet:
    kept = [p for p in parts if len(p)]
    return WindowSet.concat(kept) if kept else fallback.subset(np.zeros(len(fallback), dtype=bool))


def fit_posthoc(config: posthoc.PostHocConfig, totals: dict[str, np.ndarray] | None) -> posthoc.PostHocAdapter:
    """The post-hoc adapter fitted from the clients' summed statistics."""
    if totals is None:
        raise FedharError(f"no client sent statistics for the {config.name} adapter (train.posthoc)")
    return config.from_statistics(totals)


def run_federation(grid: Grid, job: ServerJob) -> dict:
    """Run (or resume) the federation ``job`` describes; returns the summary written to ``metrics.json``."""
    t_start = time.perf_counter()
    cfg = job.cfg
    loop = RoundLoop(grid, job)
    start = loop.restore() if job.resume else 0
    loop.describe(stage_of_round(cfg, start + 1), start + 1, fit_normalizer=start == 0)
    loop.prepare_strategy()
    if loop.domains is not None and loop.continual["initial"] is None:  # the b_j of forward transfer: no training yet
        loop.central_metrics(stage_end=-1)
    setup_seconds = time.perf_counter() - t_start  # the federation described, the normaliser fitted
    counts = parameter_counts(loop.model)
    if job.progress:
        console.print(
            f"[bold]{cfg.federated.strategy}[/]: {len(loop.members.federation.clients)} clients, "
            f"rounds {start + 1}..{cfg.federated.rounds}, "
            f"{counts['trainable']:,} trainable of {counts['total']:,} parameters"
        )
    for rnd in range(start + 1, cfg.federated.rounds + 1):
        stage = stage_of_round(cfg, rnd)
        if stage != loop.members.federation.stage:  # the data changed: ask again who holds what
            loop.describe(stage, rnd, fit_normalizer=False)
            if job.progress and loop.members.per_sample:
                console.print(f"stage {stage}: clients are described as rounds sample them "
                              f"(federated.clients_per_round={cfg.federated.clients_per_round})")  # fmt: skip
            elif job.progress:
                console.print(f"stage {stage}: {len(loop.members.federation.clients)} clients hold data")
        if loop.anchor_stage != stage:  # l2 / ewc: anchored at the end of the previous stage (also after a resume)
            loop.begin_stage(stage)
        try:
            if job.progress:
                with console.status(f"round {rnd}/{cfg.federated.rounds}: {cfg.federated.strategy} on "
                                    f"{len(loop.members.federation.clients)} clients…"):  # fmt: skip
                    row = loop.train_round(rnd)
            else:
                row = loop.train_round(rnd)
        except PrivacyBudgetExhausted as e:  # raised by the DP wrapper before anything is sent: a clean stop
            loop.stopped = f"before round {rnd}: {e} (federated.dp.max_epsilon={cfg.federated.dp.max_epsilon})"
            loop._say(f"[yellow]stopped {loop.stopped}[/]")
            break
        loop.rows.append(row)
        loop.save_round(rnd)
        if job.progress:
            console.print(_progress_line(row, cfg.federated.rounds, loop.posthoc), soft_wrap=True)
    set_trainable_state(loop.model, loop.global_state, where="final state")
    save_checkpoint(loop.model, job.run.file("checkpoint"), extra={
        "run": cfg.name, "seed": cfg.seed, "strategy": cfg.federated.strategy, "rounds": cfg.federated.rounds,
        **loop.posthoc_record(), **loop.provenance,
    })  # fmt: skip
    if loop.past_adapters:  # olora: the checkpoint's model needs the earlier stages' adapters too (load_checkpoint)
        save_file({k: np.ascontiguousarray(v) for k, v in loop.past_adapters.items()},
                  str(job.run.file("checkpoint") / olora.PAST_FILE))  # fmt: skip
    summary = summarize(cfg, loop.rows, loop.model, loop.members.federation.clients, time.perf_counter() - t_start)
    summary["strategy_args"] = dict(cfg.federated.strategy_args)
    summary["server_setup_seconds"] = round(setup_seconds, 3)
    summary["setup_queries"] = loop.members.queries  # setup messages sent (describe): per node once, then sampled
    if loop.init_from is not None:  # transfer: where the initial global tensors came from
        summary["init_from"] = loop.init_from
        job.run.update_json("run.json", init_from=loop.init_from)
    if loop.stopped:
        summary["stopped"] = loop.stopped
    if cfg.federated.dp is not None:
        summary["dp"] = {**dataclasses.asdict(cfg.federated.dp), "sampled_clients": loop.num_sampled,
                         "spent": aggregation.privacy_spent(loop.strategy),
                         "accounting": "Flower's RDP accountant, no amplification by sampling, add/remove-one "
                         "client neighbouring" if cfg.federated.dp.clipping == "fixed" and cfg.federated.dp.delta
                         else "none: Flower accounts ε for fixed clipping only"}  # fmt: skip
    if loop.attackers:
        summary["attack"] = {**dataclasses.asdict(cfg.federated.attack), "attackers": sorted(loop.attackers),
                             "note": "ATTACKED run (simulated poisoning, federated.attack)"}  # fmt: skip
    if loop.posthoc is not None:  # a client-side step: reported beside the per-window figures
        if not loop.posthoc_scores:  # resumed after the last round: this process has not scored the model yet
            loop.central_metrics()
        summary[f"client_{loop.posthoc.tag}"] = loop.posthoc_scores
        summary["posthoc"] = loop.posthoc.record()
    if loop.domains is not None:
        from fedhar.continual.results import write_continual

        summary["continual"] = write_continual(job.run, cfg, loop.continual, loop.rows)
    job.run.write_json("metrics.json", summary)
    if loop.rows:
        plot_rounds(loop.rows, job.run.path, title=f"{cfg.name}: {cfg.federated.strategy}"
                    + (" (SYNTHETIC data)" if cfg.data.dataset == "synthetic" else ""))  # fmt: skip
    return summary


def _progress_line(row: dict, rounds: int, adapter: posthoc.PostHocAdapter | None = None) -> str:
    """One short line per round (fits an 80-column terminal); with a post-hoc adapter, its test score too."""
    parts = [f"round {row['round']:>3}/{rounds}"]
    for split in ("val", "test"):
        if f"{split}_macro_f1" in row:
            parts.append(f"{split} F1 {row[f'{split}_macro_f1']:.3f}")
    if adapter is not None and f"test_{adapter.tag}_macro_f1" in row:
        parts.append(f"{adapter.tag} {row[f'test_{adapter.tag}_macro_f1']:.3f}")
    split = "test" if "test_accuracy" in row else "val"
    parts.append(f"{split} acc {row[f'{split}_accuracy']:.3f}")
    parts.append(f"{row['bytes_total'] / 1e6:.1f} MB")
    parts.append(f"{row['round_seconds']:.1f} s")
    if row["clients_failed"]:
        parts.append(f"[yellow]{row['clients_failed']} failed[/]")
    if row.get("clients_rejected"):
        parts.append(f"[yellow]{row['clients_rejected']} rejected[/]")
    return "  ".join(parts)
