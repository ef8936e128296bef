"""Deployed fedhar on loopback: `fedhar server` + 2 `fedhar client` devices on HAPT subjects, real processes, TLS.

Measures what a deployment costs besides the learning itself:

* round wall time (server: send, wait, aggregate, score the held-out subjects, checkpoint) and the
  server's central evaluation inside it;
* the client-side overhead per round outside training: a device's time on a round's message
  (claimed from its SuperNode → reply handed back) minus its training time, split into fetching the
  message, the handler's own work around training (decode, encode) and returning the reply; plus the
  one-off cost of the first message (building the model, loading the backbone);
* bytes per round (serialized arrays + config/metric records, both directions);
* peak RSS per device: the `fedhar client` process (torch, the model) and its Flower SuperNode;
* `fedhar predict` latency per window on CPU with the global checkpoint (a test subject's recording),
  plus one window at a time in a loop (what a device streaming its sensor sees).

With ``--compare-subprocess`` (default on) it also runs the same federation for 2 rounds with Flower's
default ``subprocess`` isolation (a fresh ``flwr-clientapp`` process per message) instead of
fedhar's long-lived client process, to show what the design choice saves.

    python simulations/deploy.py --out runs/deploy-benchmark
    python simulations/deploy.py --out runs/x --rounds 2 --max-steps 5 --no-compare-subprocess
    python simulations/deploy.py --quick                                  # minutes

Settings: simulations/configs/deploy.yaml. Writes deploy_benchmark.json (and the run folders) into --out. All processes run on this machine
(its CPUs are shared by the server and both devices); every one is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from fedhar.benchmarks.recipe import parse
from fedhar.benchmarks.results import write_json
from fedhar.benchmarks.runner import FEDHAR, REPO


class PeakRss:
    """Samples process trees every ``interval`` s: peak of each tree's summed RSS and of its root alone (MB)."""

    def __init__(self, interval: float = 0.5):
        self.roots: dict[str, int] = {}
        self.peak_tree: dict[str, float] = {}
        self.peak_root: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            for name, pid in list(self.roots.items()):
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                total = 0.0
                for proc in procs:
                    try:
                        rss = proc.memory_info().rss / 2**20
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    total += rss
                    if proc.pid == pid:
                        self.peak_root[name] = max(self.peak_root.get(name, 0.0), rss)
                self.peak_tree[name] = max(self.peak_tree.get(name, 0.0), total)
            self._stop.wait(interval)


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate the processes this script started and everything they started (by pid), then kill leftovers."""
    tree = []
    for p in procs:
        try:
            tree += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=30)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


def wait_for_text(path: Path, needle: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until ``needle`` is in the log ``path`` (the server registered the device keys: devices may connect)."""
    deadline = time.monotonic() + timeout_s
    while needle not in (path.read_text(errors="replace") if path.is_file() else ""):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"`{needle}` never appeared in {path}")
        time.sleep(0.2)


def federation(out: Path, tag: str, args, env: dict, rounds: int, isolation: str) -> dict:
    """One deployed run: the server and two devices; returns rounds, per-device tasks and peak RSS."""
    from fedhar.deploy.client import node_config
    from fedhar.deploy.runtime import free_port

    port, certs = free_port(), out / "certs"
    address = f"127.0.0.1:{port}"
    overrides = [f"name={tag}", f"output_dir={out / 'runs'}", f"federated.rounds={rounds}", "federated.min_clients=2",
                 f"train.max_steps_per_epoch={args.max_steps}", *args.overrides]  # fmt: skip
    server_cmd = [*FEDHAR, "server", "--config", args.config, "--address", address, "--certs", str(certs),
                  "--client-keys", str(certs / "clients"), "--clients", "2", *overrides]  # fmt: skip
    logs = out / tag
    logs.mkdir(parents=True, exist_ok=True)
    procs, rss = [], PeakRss()
    t0 = time.perf_counter()
    try:
        server = start(server_cmd, logs / "server.log", env)
        procs.append(server)
        rss.watch("server", server.pid)
        wait_for_text(logs / "server.log", "waiting for", server)  # Flower's own SuperNode gives up on unknown keys
        for i, subject in enumerate(args.subjects, start=1):
            work = logs / f"device{i}"
            key = certs / "clients" / f"device{i}.key"
            if isolation == "process":  # fedhar client: one long-lived process serves every message
                cmd = [*FEDHAR, "client", "--server", address, "--data", args.data, "--subjects", subject,
                       "--ca", str(certs / "ca.crt"), "--key", str(key), "--work-dir", str(work)]  # fmt: skip
            else:  # Flower's default: the SuperNode starts a fresh flwr-clientapp process per message
                from fedhar.deploy.runtime import node_config_arg

                config = node_config(Path(args.data), "auto", subject, f"device{i}", None, None)
                work.mkdir(parents=True, exist_ok=True)
                cmd = [str(Path(sys.executable).parent / "flower-supernode"), "--superlink", address,
                       "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key", str(key),
                       "--node-config", node_config_arg(config), "--port", str(free_port())]  # fmt: skip
            proc = start(cmd, logs / f"device{i}.log", dict(env, FLWR_HOME=str(work / "flwr-home")))
            procs.append(proc)
            rss.watch(f"device{i}", proc.pid)
        rss.start()
        if server.wait(args.timeout) != 0:
            raise SystemExit(f"{tag}: fedhar server failed; see {logs / 'server.log'}:\n"
                             + (logs / "server.log").read_text()[-2000:])  # fmt: skip
    finally:
        stop(procs)
        if rss._thread.is_alive():
            rss.stop()
    wall = time.perf_counter() - t0
    run = out / "runs" / tag
    data = json.loads((run / "rounds.json").read_text())
    tasks = {}
    for i in range(1, len(args.subjects) + 1):
        path = logs / f"device{i}" / "tasks.jsonl"
        tasks[f"device{i}"] = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return {"run_dir": str(run), "wall_seconds": round(wall, 1), "rounds": data["rounds"], "clients": data["clients"],
            "tasks": tasks, "peak_rss_mb": {k: round(v) for k, v in rss.peak_tree.items()},
            "peak_rss_root_mb": {k: round(v) for k, v in rss.peak_root.items()}}  # fmt: skip


def mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 3) if values else float("nan")


def client_overheads(result: dict) -> dict:
    """Per device and round: time on the train message outside training, and where it went."""
    train_s = {(c["client"], str(c["round"])): c["train_seconds"] for c in result["clients"]}
    handler_s = {(c["client"], str(c["round"])): c["client_seconds"] for c in result["clients"]}
    per_round, first = [], []
    for device, tasks in result["tasks"].items():
        for t in tasks:
            if t["message_type"] != "train" or not t["ok"]:
                continue
            key = (device, t["group"])
            if key not in train_s:
                continue
            row = {"device": device, "round": int(t["group"]), "task_s": t["seconds"], "train_s": train_s[key],
                   "fetch_s": t["pull_s"], "handler_outside_training_s": handler_s[key] - train_s[key],
                   "reply_s": t["push_s"] + (t["seconds"] - t["pull_s"] - t["app_s"] - t["push_s"]),
                   "outside_training_s": t["seconds"] - train_s[key]}  # fmt: skip
            (first if row["round"] == 1 else per_round).append(row)
    keys = ("task_s", "train_s", "outside_training_s", "fetch_s", "handler_outside_training_s", "reply_s")
    return {
        "rounds_after_the_first": {k: mean([r[k] for r in per_round]) for k in keys},
        "first_round": {k: mean([r[k] for r in first]) for k in keys},
        "per_device_round": per_round + first,
    }


def messaging_latency(result: dict) -> list[float]:
    """Per round: wall time minus the server's central evaluation minus the slowest device's time on its message
    (what is left: Flower delivering the message and the reply — the SuperNode polls every 3 s — and the
    server's aggregation and checkpoint)."""
    slowest: dict[int, float] = {}
    for tasks in result["tasks"].values():
        for t in tasks:
            if t["message_type"] == "train" and t["group"]:
                slowest[int(t["group"])] = max(slowest.get(int(t["group"]), 0.0), t["seconds"])
    return [round(r["round_seconds"] - r.get("central_eval_seconds", 0.0) - slowest[r["round"]], 2)
            for r in result["rounds"] if r["round"] in slowest]  # fmt: skip


def subprocess_overheads(result: dict) -> dict:
    """Flower's subprocess isolation: the handler time per message includes building the model every time."""
    rows = [{"device": c["client"], "round": c["round"], "handler_s": c["client_seconds"],
             "train_s": c["train_seconds"]} for c in result["clients"]]  # fmt: skip
    return {"handler_outside_training_s": mean([r["handler_s"] - r["train_s"] for r in rows]), "per_device_round": rows}


def predict_latency(run_dir: Path, args, env: dict, out: Path) -> dict:
    """`fedhar predict` on a held-out subject's recording with the global checkpoint, and one window at a time."""
    import numpy as np
    import torch

    from fedhar.config import load_config
    from fedhar.data.loaders import load_recordings
    from fedhar.model.har_model import predict_logits
    from fedhar.model.state import load_checkpoint

    cfg = load_config(run_dir / "config.yaml")
    subject = str((cfg.data.split.test or ["27"])[0])
    recs = [r for r in load_recordings(cfg.data.path, cfg.data.dataset).recordings if r.subject == subject]
    rec = recs[0]
    channels = list(rec.layout.channels)
    keep = [channels.index(c) for c in channels if c.split("_")[0] in cfg.data.sensors]
    csv = out / f"subject{subject}.csv"
    with csv.open("w") as f:
        f.write("timestamp," + ",".join(channels[k] for k in keep) + "\n")
        for i, row in enumerate(rec.signal[:, keep]):
            f.write(f"{i / rec.sample_rate:.4f}," + ",".join(f"{v:.6f}" for v in row) + "\n")
    t0 = time.perf_counter()
    cmd = [*FEDHAR, "predict", str(run_dir / "checkpoint"), str(csv), "--out", str(out / "predictions.csv")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    command_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fedhar predict failed:\n{proc.stderr[-2000:]}")
    found = re.search(r"(\d+) windows in ([\d.]+) s \(([\d.]+) ms/window\)", proc.stderr)
    windows, seconds, ms = int(found.group(1)), float(found.group(2)), float(found.group(3))
    model = load_checkpoint(run_dir / "checkpoint")
    spec = model.data
    n = spec.window_len
    x = np.ascontiguousarray(rec.signal[: n * 40, keep].reshape(40, n, len(keep)).transpose(0, 2, 1))
    predict_logits(model, x[:1])  # warm-up
    single = []
    for i in range(len(x)):
        t = time.perf_counter()
        predict_logits(model, x[i : i + 1])
        single.append((time.perf_counter() - t) * 1000)
    return {"subject": subject, "recording_seconds": round(len(rec.signal) / rec.sample_rate, 1), "windows": windows,
            "predict_seconds": seconds, "ms_per_window_batched": ms,
            "command_seconds_with_model_load": round(command_s, 2),
            "ms_per_window_one_at_a_time_median": round(statistics.median(single), 2),
            "torch_threads": torch.get_num_threads()}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="deploy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "deploy-benchmark")
    p.add_argument("--config", default=str(REPO / "configs" / "deploy-hapt.yaml"))
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "hapt-train"),
                   help="the devices' recordings")  # fmt: skip
    p.add_argument("--subjects", nargs=2, default=["1", "3"], help="one HAPT training subject per device")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=10, help="train.max_steps_per_epoch: small local work per round")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--compare-subprocess", action=argparse.BooleanOptionalAction, default=True,
                   help="also run 2 rounds with Flower's default subprocess isolation")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="config overrides for the server, e.g. model.num_layers=2")
    args = parse(p, argv, "deploy")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # Flower's executables
    subprocess.run([*FEDHAR, "certs", "--out", str(out / "certs"), "--clients", "device1", "device2"], env=env,
                   check=True, capture_output=True)  # fmt: skip

    print(f"deployed run: {args.rounds} rounds, devices on HAPT subjects {args.subjects}, "
          f"train.max_steps_per_epoch={args.max_steps}", flush=True)  # fmt: skip
    result = federation(out, "deployed", args, env, args.rounds, "process")
    rows = result["rounds"]
    report = {
        "setup": {"config": args.config, "overrides": args.overrides, "subjects": args.subjects, "rounds": args.rounds,
                  "max_steps_per_epoch": args.max_steps, "cpus": os.cpu_count(), "loopback": True, "tls": True},
        "round_seconds": [r["round_seconds"] for r in rows],
        "round_seconds_after_the_first_mean": mean([r["round_seconds"] for r in rows[1:]]),
        "central_eval_seconds": [r.get("central_eval_seconds") for r in rows],
        "bytes_per_round": [r["bytes_total"] for r in rows],
        "bytes_per_client_per_round": mean([r["bytes_per_client"] for r in rows]),
        "client_overhead": client_overheads(result),
        "messaging_latency_s": messaging_latency(result),
        "peak_rss_mb": result["peak_rss_mb"],
        "peak_rss_process_mb": result["peak_rss_root_mb"],
        "test_macro_f1": [r.get("test_macro_f1") for r in rows],
        "run_dir": result["run_dir"],
        "wall_seconds": result["wall_seconds"],
    }
    print("predict latency with the global checkpoint…", flush=True)
    report["predict"] = predict_latency(Path(result["run_dir"]), args, env, out)
    if args.compare_subprocess:
        print("the same federation with Flower's subprocess isolation (2 rounds)…", flush=True)
        base = federation(out, "subprocess-isolation", args, env, 2, "subprocess")
        report["subprocess_isolation"] = {
            "round_seconds": [r["round_seconds"] for r in base["rounds"]],
            "client_overhead": subprocess_overheads(base),
            "peak_rss_mb": base["peak_rss_mb"],
            "run_dir": base["run_dir"],
        }
    write_json(out / "deploy_benchmark.json", report)
    summarize(report)
    print(f"\nwrote {out / 'deploy_benchmark.json'}")


def summarize(r: dict) -> None:
    c = r["client_overhead"]
    later, first = c["rounds_after_the_first"], c["first_round"]
    print("\n== deployed fedhar on loopback (TLS, device keys, 2 devices on one shared CPU) ==")
    print(f"round wall time (s):            {r['round_seconds']}  "
          f"(after round 1: mean {r['round_seconds_after_the_first_mean']})")
    print(f"  of which central evaluation:  {r['central_eval_seconds']}")
    print(f"bytes per round:                {r['bytes_per_round']}  ({r['bytes_per_client_per_round']:.0f} per device)")
    print(f"device time per round (s):      {later['task_s']} on the train message, {later['train_s']} training")
    print(f"  outside training:             {later['outside_training_s']} = fetch {later['fetch_s']} + handler "
          f"{later['handler_outside_training_s']} + reply {later['reply_s']}")  # fmt: skip
    print(f"  first round (model build):    {first['outside_training_s']} outside training")
    print(f"messaging latency per round:    {r['messaging_latency_s']} s "
          "(round − central evaluation − slowest device)")
    print(f"peak RSS (MB), process tree:    {r['peak_rss_mb']}  (processes alone: {r['peak_rss_process_mb']})")
    pr = r["predict"]
    print(f"fedhar predict:                 {pr['ms_per_window_batched']} ms/window batched ({pr['windows']} windows), "
          f"{pr['ms_per_window_one_at_a_time_median']} ms one window at a time, "
          f"{pr['command_seconds_with_model_load']} s for the command")  # fmt: skip
    if "subprocess_isolation" in r:
        s = r["subprocess_isolation"]
        print(f"Flower subprocess isolation:    rounds {s['round_seconds']} s; handler outside training "
              f"{s['client_overhead']['handler_outside_training_s']} s per message; "
              f"peak RSS {s['peak_rss_mb']}")  # fmt: skip


