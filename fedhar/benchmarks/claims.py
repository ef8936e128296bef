"""The method's claims, measured (issue 21): data efficiency (low labels, few shots), convergence speed and transfer
to a new dataset or device — every model through the same loop and data, centralized and federated (one client
per training subject), over seeds. The protocols are fixed in docs/claims.md before any number exists.

    python simulations/claims.py --out runs/claims                            # the full run (docs/claims.md)
    python simulations/claims.py --quick                                      # every protocol, tiny, minutes
    python simulations/claims.py --protocols labels --models smollm2-lora,transformer --seeds 0,1,2
    python simulations/claims.py --protocols shots --config my.yaml           # a user's own data (a fedhar config)
    python simulations/claims.py --table-only --out runs/claims               # tabulate what ran

Protocols (``--protocols``):

* ``labels``: ``data.labelled_percent`` p ∈ ``--percents`` of every client's (subject's) training windows, per class;
* ``shots``: ``data.labelled_per_class`` k ∈ ``--shots`` windows per class per client (subject);
* ``convergence``: the ``labels`` runs at 100 %: epochs / rounds until the validation macro-F1 first reaches 0.90
  and 0.95 of the run's own final validation macro-F1; test macro-F1 per round of every model on one plot;
* ``transfer``: trained on the source (``--config``, all labels), then ``train.init_from`` its checkpoint on a
  target with k ∈ ``--transfer-shots`` labelled windows per class per client, against the target from scratch:
  ``spar`` (HAPT → SPAR smartwatch exercises: a new head), ``device`` (HAPT → HAPT as a simulated second device,
  fedhar.data.device_transform, the continual HAPT scenario's: the head carried) and ``synthetic`` (fedhar's
  embedded synthetic data → HAPT). ``--transfers`` picks them.

Centralized runs apply the labelled budget per class and subject (``data.labelled_per_subject``): the very windows
the federation's clients keep, so both modes learn from the same labelled windows. Hyper-parameters: the learning
rate of each model is chosen from ``--lr-grid`` on the *validation* subjects (centralized, all labels, the first
seed, the same epochs for every model) and used in every protocol and mode; which value each model ran with and
where it came from is in claims_runs.json (``hyperparameters``).

Writes into --out: claims_runs.json / .csv (every run: protocol, mode, model, level, seed, labelled windows, scores,
wall time), claims_table.csv / .md (mean ± sd over seeds per protocol, mode, model and level), claims_labels.png,
claims_shots.png, claims_rounds.png, and every run's own folder under runs/. Re-running reuses runs measured with
the same settings and stops on one measured with others. Settings: simulations/configs/claims.yaml.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from fedhar.benchmarks.recipe import parse
from fedhar.benchmarks.results import plt, save_plot, write_csv, write_json, write_markdown
from fedhar.benchmarks.runner import REPO, check_reusable, finished_run_dir, simulate_variant, train_variant

#: the models of every protocol: one run each through the same loop and data
MODELS = {
    "smollm2-lora": ["model.kind=llm", "model.backbone=smollm2-135m", "model.finetune=lora"],
    "minilm-lora": ["model.kind=llm", "model.backbone=minilm-l6", "model.finetune=lora", "model.num_layers=null"],
    "transformer": ["model.kind=transformer", "model.hidden=128", "model.depth=4", "model.heads=4"],
    "deepconvlstm": ["model.kind=deepconvlstm"],
    "smollm2-random": ["model.kind=llm", "model.backbone=smollm2-135m", "model.finetune=lora",
                       "model.pretrained=false"],  # fmt: skip
}
#: --tiny (the quick run): each pretrained backbone replaced by fedhar's tiny random model of its family
TINY = {"smollm2-135m": ["model.backbone=tiny-llama", "model.num_layers=2"],
        "minilm-l6": ["model.backbone=tiny-bert", "model.num_layers=2"]}  # fmt: skip
PROTOCOLS = ("labels", "shots", "convergence", "transfer")
TRANSFERS = ("spar", "device", "synthetic")
MODES = {"central": "fedhar train", "fed": "fedhar simulate"}
FRACTIONS = (0.90, 0.95)
RUN_COLUMNS = ["protocol", "mode", "model", "level", "seed", "labelled_windows", "clients", "test_macro_f1",
               "test_accuracy", "val_macro_f1", "init_from", "lr", "wall_seconds", "run"]  # fmt: skip
TABLE_COLUMNS = ["protocol", "mode", "model", "level", "seeds", "labelled_windows", "test_macro_f1", "val_macro_f1",
                 "epochs_or_rounds"]  # fmt: skip


# ---- data of each domain ----------------------------------------------------------------------------------


def spar_overrides(args) -> list[str]:
    """SPAR smartwatch exercises (both wrists), 7 classes: its own label set, so a transferred model gets a new head."""
    return ["data.dataset=spar", f"data.path={args.spar}", "data.classes=null", "data.placement=null",
            f"data.split.train={args.spar_train}", f"data.split.val={args.spar_val}",
            f"data.split.test={args.spar_test}"]  # fmt: skip


def synthetic_overrides(args) -> list[str]:
    """fedhar's embedded synthetic recordings (the six basic activities, split by seeded subject fractions)."""
    return ["data.dataset=synthetic", "data.path=null", "data.split.train=null", "data.split.val=null",
            "data.split.test=null", f"data.synthetic.subjects={args.synthetic_subjects}",
            f"data.synthetic.seconds_per_activity={args.synthetic_seconds}"]  # fmt: skip


def device_data(args, base: list[str], out: Path) -> list[str]:
    """The source data as a simulated second device (the continual HAPT scenario's stage-2 transform), saved once
    as an .npz window set (subjects and labels kept) that every run reads with the generic loader."""
    from fedhar.config import load_config, shipped_config
    from fedhar.data.device_transform import apply_device_transform
    from fedhar.data.pipeline import load_windows

    path = out / "data" / "device-b.npz"
    if not path.is_file():
        cfg = load_config(args.config, base)
        transform = next(s.transform for s in load_config(shipped_config("continual-hapt.yaml")).continual.stages
                         if s.transform is not None)  # fmt: skip
        ws = load_windows(cfg.data, cfg.seed)
        split = cfg.data.split
        if split.train and (split.val or split.test):  # only the subjects the runs use
            ws = ws.where(subject=[str(s) for s in [*split.train, *(split.val or []), *(split.test or [])]])
        ws = apply_device_transform(ws, transform, seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        ws.save(path)
    return ["data.dataset=generic", f"data.path={path.resolve()}", "data.overlap=0", "data.train_overlap=null"]


# ---- one run --------------------------------------------------------------------------------------------


class Runner:
    """Runs (or reuses) one `fedhar train` / `fedhar simulate` per setting; the same settings run once."""

    def __init__(self, args, runs: Path):
        self.args, self.runs = args, runs
        self.done: dict[tuple, dict] = {}

    def __call__(self, mode: str, name: str, overrides: list[str]) -> dict:
        key = (mode, tuple(overrides))
        if key in self.done:
            return self.done[key]
        config = self.args.config
        if self.args.table_only:
            run_dir = finished_run_dir(self.runs, name)
            if run_dir is None:
                return {}
            metrics = json.loads((run_dir / "metrics.json").read_text())
            wall = metrics.get("wall_seconds")
        elif mode == "central":
            run_dir = finished_run_dir(self.runs, name)
            if run_dir is not None:
                check_reusable(run_dir, config, overrides, "train")
                print(f"=== {name}: measured before ({run_dir})", flush=True)
                metrics = json.loads((run_dir / "metrics.json").read_text())
                wall = metrics.get("wall_seconds")
            else:
                t0 = time.perf_counter()
                metrics = train_variant(config, name, self.runs, overrides)
                wall, run_dir = time.perf_counter() - t0, Path(metrics["run_dir"])
        else:
            metrics, wall, run_dir = simulate_variant(config, name, self.runs, overrides)
            wall = wall if wall is not None else metrics.get("wall_seconds")
        result = {"metrics": metrics, "run_dir": run_dir, "wall_seconds": None if wall is None else round(wall, 1)}
        self.done[key] = result
        return result


def scores(mode: str, result: dict) -> dict:
    """Test / validation scores and the labelled windows the run itself reports having trained on."""
    m, run_dir = result["metrics"], result["run_dir"]
    if mode == "central":
        test, val = m.get("test") or {}, m.get("val") or {}
        return {"labelled_windows": m["windows"]["train"], "clients": len(m["subjects"]["train"]),
                "test_macro_f1": test.get("macro_f1"), "test_accuracy": test.get("accuracy"),
                "val_macro_f1": val.get("macro_f1")}  # fmt: skip
    final = m.get("final", {})
    return {"labelled_windows": int(sum(m["client_windows"].values())), "clients": m["clients"],
            "test_macro_f1": final.get("test_macro_f1"), "test_accuracy": final.get("test_accuracy"),
            "val_macro_f1": final.get("val_macro_f1")}  # fmt: skip


def curve(mode: str, run_dir: Path) -> list[dict]:
    """Per epoch (centralized: epochs.csv) or round (federated: rounds.json): validation (and test) macro-F1."""
    if mode == "central":
        with (run_dir / "epochs.csv").open() as f:
            return [{"step": int(r["epoch"]), "val_macro_f1": float(r["val_macro_f1"])} for r in csv.DictReader(f)]
    rows = json.loads((run_dir / "rounds.json").read_text())["rounds"]
    return [{"step": int(r["round"]), "val_macro_f1": r.get("val_macro_f1"), "test_macro_f1": r.get("test_macro_f1")}
            for r in rows]  # fmt: skip


def steps_to_reach(points: list[dict], fraction: float) -> int | None:
    """The first epoch / round whose validation macro-F1 is ≥ ``fraction`` of the last one's (None: no curve)."""
    vals = [p["val_macro_f1"] for p in points if p.get("val_macro_f1") is not None]
    if not vals:
        return None
    target = fraction * vals[-1]
    return next(p["step"] for p in points if p.get("val_macro_f1") is not None and p["val_macro_f1"] >= target)


# ---- the protocols ----------------------------------------------------------------------------------------


def model_overrides(args, model: str) -> list[str]:
    if model not in MODELS:
        raise SystemExit(f"unknown model `{model}`; choose from {list(MODELS)}")
    out = list(MODELS[model])
    if args.tiny:
        for spec, tiny in TINY.items():
            if f"model.backbone={spec}" in out:
                out = [o for o in out if o not in (f"model.backbone={spec}", "model.num_layers=null")] + tiny
    return out


def budget(args, mode: str) -> list[str]:
    """The same training budget for every model: epochs (centralized) or rounds (federated)."""
    return [f"train.epochs={args.epochs}"] if mode == "central" else [f"federated.rounds={args.rounds}"]


def tune(args, run, models: list[str]) -> dict[str, dict]:
    """Each model's learning rate: the best *validation* macro-F1 over --lr-grid (centralized, all labels, first
    seed, the same epochs for every model); never a test score."""
    chosen = {}
    seed = args.seed_list[0]
    for model in models:
        grid = {}
        for lr in args.lr_grid.split(","):
            name = f"tune-{model}-lr{lr}-s{seed}"
            result = run("central", name, [*args.overrides, *model_overrides(args, model), *budget(args, "central"),
                                           f"train.lr={lr}", f"seed={seed}"])  # fmt: skip
            if result:
                grid[lr] = result["metrics"].get("best_val_macro_f1")
        best = max(grid, key=lambda v: -1.0 if grid[v] is None else grid[v]) if grid else args.lr_grid.split(",")[0]
        chosen[model] = {"lr": best, "grid_val_macro_f1": grid,
                         "source": (f"best validation macro-F1 of --lr-grid {args.lr_grid} (centralized, all labels, "
                                    f"seed {seed}, {args.epochs} epochs, the validation subjects of {args.config})"
                                    if len(grid) > 1 else f"the one value of --lr-grid {args.lr_grid} (not tuned)")}
    return chosen


def plan(args, hyper: dict) -> list[dict]:
    """Every run of the chosen protocols: (protocol, mode, model, level, seed, name, overrides, source)."""
    out: list[dict] = []
    for mode in args.mode_list:
        protocols = set(args.fed_protocol_list if mode == "fed" else args.protocol_list)
        labelled = ["data.labelled_per_subject=true"] if mode == "central" else []
        for model in (args.fed_model_list if mode == "fed" else args.model_list):
            for seed in args.seed_list:
                base = [*args.overrides, *model_overrides(args, model), *budget(args, mode),
                        f"train.lr={hyper[model]['lr']}", f"seed={seed}"]  # fmt: skip
                tag = f"{mode}-{model}"

                def add(protocol, level, name, overrides, source=None):
                    out.append({"protocol": protocol, "mode": mode, "model": model, "level": level, "seed": seed,
                                "name": f"{tag}-{name}-s{seed}", "overrides": overrides, "source": source})  # fmt: skip

                full = f"{tag}-hapt-p100-s{seed}"
                if protocols & {"labels", "convergence", "transfer"}:
                    add("labels", "100%", "hapt-p100", base)
                if "labels" in protocols:
                    for p in args.percent_list:
                        if p != 100:
                            add("labels", f"{p:g}%", f"hapt-p{p:g}", [*base, *labelled, f"data.labelled_percent={p:g}"])
                if "shots" in protocols:
                    for k in args.shot_list:
                        add("shots", f"k={k}", f"hapt-k{k}", [*base, *labelled, f"data.labelled_per_class={k}"])
                if "transfer" in protocols:
                    for target in args.transfer_list:
                        if target == "synthetic":  # synthetic → HAPT: the source is the synthetic run
                            source_name = f"{tag}-synthetic-s{seed}"
                            add("transfer-source", "synthetic", "synthetic", [*base, *synthetic_overrides(args)])
                            data, label = [], "hapt"
                        else:
                            source_name = full
                            data = spar_overrides(args) if target == "spar" else args.device_overrides
                            label = target
                        for k in args.transfer_shot_list:
                            few = [*base, *data, *labelled, f"data.labelled_per_class={k}"]
                            add(f"transfer-{target}", f"k={k} scratch", f"{label}-k{k}", few)
                            add(f"transfer-{target}", f"k={k} from {'synthetic' if target == 'synthetic' else 'hapt'}",
                                f"{label}-k{k}-from-{'synthetic' if target == 'synthetic' else 'hapt'}", few,
                                source=source_name)  # fmt: skip
    return out


def execute(args, run, planned: list[dict]) -> list[dict]:
    """Run every planned run (sources first); one row each."""
    rows, by_name = [], {}
    for item in sorted(planned, key=lambda i: i["source"] is not None):
        overrides = list(item["overrides"])
        if item["source"] is not None:
            source = by_name.get(item["source"])
            if not source:
                print(f"{item['name']}: its source {item['source']} has not run; skipped")
                continue
            overrides.append(f"train.init_from={(source['run_dir'] / 'checkpoint').resolve()}")
        result = run(item["mode"], item["name"], overrides)
        if not result:
            continue
        by_name[item["name"]] = result
        rows.append({**{k: item[k] for k in ("protocol", "mode", "model", "level", "seed")},
                     **scores(item["mode"], result), "init_from": item["source"],
                     "lr": next((o.split("=", 1)[1] for o in overrides if o.startswith("train.lr=")), None),
                     "wall_seconds": result["wall_seconds"], "run": str(result["run_dir"])})  # fmt: skip
    return rows


def convergence_rows(rows: list[dict]) -> list[dict]:
    """Epochs / rounds to 0.90 and 0.95 of each all-labels run's own final validation macro-F1."""
    out = []
    for r in rows:
        if r["protocol"] != "labels" or r["level"] != "100%":
            continue
        points = curve(r["mode"], Path(r["run"]))
        row = {"protocol": "convergence", "mode": r["mode"], "model": r["model"], "seed": r["seed"],
               "steps_run": len(points), "run": r["run"], "curve": points}  # fmt: skip
        for f in FRACTIONS:
            row[f"to_{f:.2f}"] = steps_to_reach(points, f)
        out.append(row)
    return out


# ---- the table and plots ------------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _fmt(values: list, digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    mean, sd = _mean_sd(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _counts(values: list[int]) -> str:
    """Labelled windows over seeds: one number when every seed trained on as many, else their range."""
    return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)}"


def table(rows: list[dict], conv: list[dict]) -> list[dict]:
    """Mean ± sd over seeds per (protocol, mode, model, level); convergence: epochs / rounds per fraction."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["protocol"], r["mode"], r["model"], r["level"]), []).append(r)
    out = []
    for (protocol, mode, model, level), rs in groups.items():
        out.append({"protocol": protocol, "mode": mode, "model": model, "level": level, "seeds": len(rs),
                    "labelled_windows": _counts([r["labelled_windows"] for r in rs]),
                    "test_macro_f1": _fmt([r["test_macro_f1"] for r in rs]),
                    "val_macro_f1": _fmt([r["val_macro_f1"] for r in rs])})  # fmt: skip
    cgroups: dict[tuple, list[dict]] = {}
    for c in conv:
        cgroups.setdefault((c["mode"], c["model"]), []).append(c)
    for (mode, model), cs in cgroups.items():
        unit = "epochs" if mode == "central" else "rounds"
        for f in FRACTIONS:
            reached = [c[f"to_{f:.2f}"] for c in cs]
            out.append({"protocol": "convergence", "mode": mode, "model": model,
                        "level": f"{unit} to {f:.2f} of final val", "seeds": len(cs),
                        "epochs_or_rounds": _fmt(reached, digits=1)})  # fmt: skip
    return out


def _level_value(level: str) -> float:
    return float(level.rstrip("%").removeprefix("k="))


def plot_levels(rows: list[dict], protocol: str, path: Path, xlabel: str) -> None:
    """Test macro-F1 against the labelled budget of ``protocol``, one line per model and mode (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rs = [r for r in rows if r["protocol"] == protocol and r["test_macro_f1"] is not None]
    if protocol == "labels":
        rs = [r for r in rows if r["protocol"] == "labels" and r["test_macro_f1"] is not None]
    for mode, model in sorted({(r["mode"], r["model"]) for r in rs}):
        mine = [r for r in rs if (r["mode"], r["model"]) == (mode, model)]
        levels = sorted({_level_value(r["level"]) for r in mine})
        means = [np.mean([r["test_macro_f1"] for r in mine if _level_value(r["level"]) == v]) for v in levels]
        ax.plot(levels, means, marker="o", ls="-" if mode == "fed" else "--", label=f"{model} ({MODES[mode]})")
    ax.set(xscale="log", xlabel=xlabel, ylabel="test macro-F1 (mean over seeds)")
    save_plot(fig, ax, path)


def plot_rounds(conv: list[dict], path: Path) -> None:
    """Test macro-F1 per federated round, every model on one plot (mean over seeds); centralized runs have no
    per-epoch test score (their validation curve is in claims_runs.json)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in sorted({c["model"] for c in conv if c["mode"] == "fed"}):
        curves = [c["curve"] for c in conv if c["mode"] == "fed" and c["model"] == model]
        n = min(len(c) for c in curves)
        if n == 0:
            continue
        test = np.mean([[p["test_macro_f1"] for p in c[:n]] for c in curves], axis=0)
        ax.plot(range(1, n + 1), test, marker="o", label=model)
    ax.set(xlabel="federated round", ylabel="test macro-F1 (mean over seeds)")
    save_plot(fig, ax, path)


# ---- the command ------------------------------------------------------------------------------------------


def _list(value: str, cast=str) -> list:
    return [cast(v) for v in str(value).split(",") if str(v).strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="claims.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/claims"))
    p.add_argument("--config", default="configs/hapt.yaml", help="the source domain's fedhar config (HAPT)")
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    p.add_argument("--transfers", default=",".join(TRANSFERS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--modes", default=",".join(MODES), help="central (fedhar train), fed (fedhar simulate)")
    p.add_argument("--fed-models", default="", help="the models of the federated runs (default: --models)")
    p.add_argument("--fed-protocols", default="", help="the protocols of the federated runs (default: --protocols)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--percents", default="1,5,10,25,100")
    p.add_argument("--shots", default="1,5,10,20")
    p.add_argument("--transfer-shots", default="5")
    p.add_argument("--epochs", type=int, default=15, help="centralized budget, every model")
    p.add_argument("--rounds", type=int, default=20, help="federated budget, every model")
    p.add_argument("--lr-grid", default="3e-4,1e-3,3e-3", help="each model's learning rate, chosen on validation")
    p.add_argument("--spar", type=Path, default=REPO.parent / "shared" / "data" / "spar-watch")
    p.add_argument("--spar-train", default='["01", "02", "03", "04", "05"]')
    p.add_argument("--spar-val", default='["06"]')
    p.add_argument("--spar-test", default='["07"]')
    p.add_argument("--synthetic-subjects", type=int, default=20)
    p.add_argument("--synthetic-seconds", type=float, default=20.0)
    p.add_argument("--tiny", action="store_true", help="fedhar's tiny random backbones in place of the pretrained")
    p.add_argument("--table-only", action="store_true", help="train nothing: tabulate the runs measured so far")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. data.path=/my/hapt)")
    args = parse(p, argv, "claims")
    args.protocol_list, args.transfer_list = _list(args.protocols), _list(args.transfers)
    args.model_list, args.mode_list = _list(args.models), _list(args.modes)
    args.fed_model_list = _list(args.fed_models) or args.model_list
    args.fed_protocol_list = _list(args.fed_protocols) or args.protocol_list
    args.seed_list, args.percent_list = _list(args.seeds, int), _list(args.percents, float)
    args.shot_list, args.transfer_shot_list = _list(args.shots, int), _list(args.transfer_shots, int)
    for name, chosen, known in (("protocol", [*args.protocol_list, *args.fed_protocol_list], PROTOCOLS),
                                ("transfer", args.transfer_list, TRANSFERS),
                                ("mode", args.mode_list, MODES),
                                ("model", [*args.model_list, *args.fed_model_list], MODELS)):  # fmt: skip
        for c in chosen:
            if c not in known:
                raise SystemExit(f"unknown {name} `{c}`; choose from {list(known)}")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs"
    run = Runner(args, runs)
    t0 = time.perf_counter()
    args.device_overrides = (device_data(args, args.overrides, args.out) if "transfer" in args.protocol_list
                             and "device" in args.transfer_list else [])  # fmt: skip
    hyper = tune(args, run, list(dict.fromkeys([*args.model_list, *args.fed_model_list])))
    rows = execute(args, run, plan(args, hyper))
    conv = convergence_rows(rows) if "convergence" in args.protocol_list else []
    summary = table(rows, conv)
    record = {"protocols": args.protocol_list, "transfers": args.transfer_list, "models": args.model_list,
              "modes": args.mode_list, "fed_models": args.fed_model_list, "fed_protocols": args.fed_protocol_list,
              "seeds": args.seed_list, "percents": args.percent_list,
              "shots": args.shot_list, "transfer_shots": args.transfer_shot_list,
              "budget": {"epochs": args.epochs, "rounds": args.rounds}, "config": args.config,
              "overrides": args.overrides, "tiny": args.tiny, "quick": args.quick,
              "hyperparameters": hyper, "wall_seconds": round(time.perf_counter() - t0, 1),
              "runs": rows, "convergence": conv, "table": summary}  # fmt: skip
    write_json(args.out / "claims_runs.json", record)
    write_csv(args.out / "claims_runs.csv", rows, RUN_COLUMNS)
    write_csv(args.out / "claims_table.csv", summary, TABLE_COLUMNS)
    lines = write_markdown(args.out / "claims_table.md", summary, TABLE_COLUMNS)
    plot_levels(rows, "labels", args.out / "claims_labels.png", "labelled training windows (%)")
    plot_levels(rows, "shots", args.out / "claims_shots.png", "labelled windows per class per client (k)")
    plot_rounds(conv, args.out / "claims_rounds.png")
    print("\n".join(lines))
    print(f"written to {args.out}/claims_runs.json, claims_table.md, claims_*.png ({record['wall_seconds']:.0f} s)")
