"""Robust aggregation against poisoned clients, and differential privacy: test macro-F1 and ε per setting.

One Flower client per HAPT training subject (configs/hapt.yaml); every variant is a ``fedhar simulate`` run
in a fresh process. Variants:

* clean and attacked federations (``--attackers`` clients, ``--attacks``: sign-flip ×``--factor``,
  scale ×``--factor``, gaussian noise, label-flip) × ``--strategies``: ``fedavg`` (no norm bound),
  ``fedavg-bound`` (fedhar's default bound: 10 × the round's median update norm), ``fedmedian``,
  ``fedtrimmedavg`` (beta 0.2), ``krum`` / ``multikrum`` / ``bulyan`` (each told the true number of
  attackers, ``num_malicious_nodes``; a setting a rule cannot take — Bulyan needs 4f+3 clients — is
  listed as skipped with the reason);
* DP (``--dp-noise`` multipliers): FedAvg with server-side fixed clipping at the median client update
  norm of the clean FedAvg run's first round (the training clients' own scale, not a test figure),
  ε at δ = 1e-5 from Flower's RDP accountant.

    python simulations/robustness.py --out runs/robustness                     # the full grid (hours on 2 cores)
    python simulations/robustness.py --out runs/robustness --attackers 0,3 --attacks scale,sign-flip \\
        --strategies fedavg,fedmedian,fedavg-bound --dp-noise 0.5,1 federated.rounds=10   # a smaller grid
    python simulations/robustness.py --out runs/robustness-quick --quick      # every kind of row, tiny (CI-like)

Settings (and what --quick changes): simulations/configs/robustness.yaml. Writes into --out: robustness.json (every row with its overrides), robustness.csv / .md (one row per
variant: strategy, attack, attackers, final test and validation macro-F1, ε, wall time) and
robustness_dp.png (test macro-F1 against ε). Re-running reuses variants already measured with the
same settings and stops on one measured with others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedhar.benchmarks.recipe import parse
from fedhar.benchmarks.results import plt, save_plot, write_csv, write_json
from fedhar.benchmarks.runner import simulate_variant
from fedhar.config import load_config, shipped_config
from fedhar.errors import ConfigError

STRATEGIES = ("fedavg", "fedavg-bound", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
ATTACKS = ("sign-flip", "scale", "gaussian", "label-flip")
COLUMNS = ["variant", "strategy", "attack", "attackers", "dp_noise", "test_macro_f1", "test_accuracy",
           "val_macro_f1", "epsilon", "wall_seconds", "skipped"]  # fmt: skip
def strategy_overrides(strategy: str, attackers: int) -> list[str]:
    """``federated.*`` overrides of one aggregation setting; robust rules run without fedhar's norm bound."""
    if strategy == "fedavg-bound":
        return ["federated.strategy=fedavg"]  # the default bound stays on
    out = [f"federated.strategy={strategy}", "federated.update_norm_bound=null"]
    if strategy in ("krum", "multikrum", "bulyan"):
        args = f"num_malicious_nodes: {attackers}"
        if strategy == "multikrum":
            args += f", num_nodes_to_select: {max(1, 2 * attackers)}"
        out.append(f"federated.strategy_args={{{args}}}")
    if strategy == "fedtrimmedavg":
        out.append("federated.strategy_args={beta: 0.2}")
    return out


def attack_overrides(attack: str | None, attackers: int, factor: float, std: float) -> list[str]:
    if not attackers or attack is None:
        return []
    return [f"federated.attack.kind={attack}", f"federated.attack.clients={attackers}",
            f"federated.attack.factor={factor}", f"federated.attack.std={std}"]  # fmt: skip


def simulate(config: str | None, name: str, out: Path, overrides: list[str]) -> tuple[dict, float | None, Path]:
    """One ``fedhar simulate`` run (reused when finished with the same settings: its wall time is then None)."""
    return simulate_variant(config, name, out, overrides)


def result_row(name: str, m: dict, wall: float, **fields) -> dict:
    final = m.get("final", {})
    spent = (m.get("dp") or {}).get("spent") or {}
    return {"variant": name, **fields, "test_macro_f1": round(final.get("test_macro_f1", float("nan")), 4),
            "test_accuracy": round(final.get("test_accuracy", float("nan")), 4),
            "val_macro_f1": round(final.get("val_macro_f1", float("nan")), 4),
            "epsilon": round(spent["epsilon"], 3) if spent else "",
            "wall_seconds": round(wall, 1) if wall is not None else round(m.get("wall_seconds", 0.0), 1),
            "skipped": ""}  # fmt: skip


def median_first_round_norm(run_dir: Path) -> float:
    """The median L2 norm of the clients' updates in round 1 (clients.csv): the scale DP clipping starts from."""
    import numpy as np

    rows = json.loads((run_dir / "rounds.json").read_text())["clients"]
    return float(np.median([r["update_norm"] for r in rows if r["round"] == 1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="robustness.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/robustness"))
    p.add_argument("--config", default="configs/hapt.yaml")
    p.add_argument("--attackers", default="0,1,3", help="comma-separated counts of attacking clients")
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--factor", type=float, default=100.0, help="sign-flip / scale factor")
    p.add_argument("--std", type=float, default=1.0, help="gaussian attack: noise std")
    p.add_argument("--dp-noise", default="0.3,0.6,1.0,2.0", help="DP noise multipliers ('' for none)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parse(p, argv, "robustness")
    config = str(shipped_config("default.yaml")) if args.quick else args.config  # fedhar simulate's embedded default
    base = args.overrides  # --quick: the tiny synthetic federation of simulations/configs/robustness.yaml first
    strategies, attacks = args.strategies.split(","), args.attacks.split(",")
    for s in strategies:
        if s not in STRATEGIES:
            raise SystemExit(f"unknown strategy `{s}`; choose from {list(STRATEGIES)}")
    for a in attacks:
        if a not in ATTACKS:
            raise SystemExit(f"unknown attack `{a}`; choose from {list(ATTACKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    clean_fedavg: Path | None = None
    for attackers in [int(a) for a in args.attackers.split(",")]:
        for attack in ([None] if attackers == 0 else attacks):
            for strategy in strategies:
                name = f"{strategy}-{attack}-{attackers}" if attackers else f"{strategy}-clean"
                overrides = [*base, *strategy_overrides(strategy, attackers),
                             *attack_overrides(attack, attackers, args.factor, args.std)]  # fmt: skip
                fields = {"strategy": strategy, "attack": attack or "none", "attackers": attackers, "dp_noise": ""}
                try:
                    check(config, overrides)
                except ConfigError as e:  # a rule that cannot take this many attackers here: said, not hidden
                    rows.append({"variant": name, **fields, "skipped": str(e)})
                    print(f"=== {name}: skipped ({e})", flush=True)
                    continue
                m, wall, run_dir = simulate(config, name, args.out, overrides)
                rows.append({**result_row(name, m, wall, **fields), "overrides": overrides})
                if strategy == "fedavg" and not attackers:
                    clean_fedavg = run_dir
    noises = [float(x) for x in args.dp_noise.split(",") if x.strip()]
    if noises:
        if clean_fedavg is None:
            overrides = [*base, *strategy_overrides("fedavg", 0)]
            m, wall, clean_fedavg = simulate(config, "fedavg-clean", args.out, overrides)
            rows.append({**result_row("fedavg-clean", m, wall, strategy="fedavg", attack="none", attackers=0,
                                      dp_noise=""), "overrides": overrides})  # fmt: skip
        norm = median_first_round_norm(clean_fedavg)
        for noise in noises:
            name = f"dp-{noise:g}"
            overrides = [*base, "federated.strategy=fedavg", "federated.update_norm_bound=null",
                         f"federated.dp.noise_multiplier={noise}", f"federated.dp.clipping_norm={norm:.6g}"]  # fmt: skip
            m, wall, _ = simulate(config, name, args.out, overrides)
            rows.append({**result_row(name, m, wall, strategy="fedavg+dp", attack="none", attackers=0,
                                      dp_noise=noise), "clipping_norm": norm, "overrides": overrides})  # fmt: skip
    write_outputs(rows, args.out, config, base)


def check(config: str | None, overrides: list[str]) -> None:
    """The checks ``fedhar simulate`` makes before round 1 (Krum's or Bulyan's f against the sampled clients...)."""
    from fedhar.federated.simulate import preflight

    preflight(load_config(config, overrides))


def write_outputs(rows: list[dict], out: Path, config: str | None, base: list[str]) -> None:
    write_json(out / "robustness.json", {"rows": rows, "config": config, "overrides": base})
    write_csv(out / "robustness.csv", rows, COLUMNS)
    lines = ["| " + " | ".join(COLUMNS[:-1]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['variant']} | {r['strategy']} | {r['attack']} | {r['attackers']} | | skipped: "
                         f"{r['skipped']} | | | | |")  # fmt: skip
        else:
            lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS[:-1]) + " |")
    (out / "robustness.md").write_text("\n".join(lines) + "\n")
    dp = [r for r in rows if r.get("strategy") == "fedavg+dp" and r.get("epsilon") != ""]
    if dp:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["epsilon"] for r in dp], [r["test_macro_f1"] for r in dp], "o-", label="FedAvg + DP")
        clean = next((r for r in rows if r["variant"] == "fedavg-clean" and not r.get("skipped")), None)
        if clean:
            ax.axhline(clean["test_macro_f1"], ls="--", c="gray", label="FedAvg, no DP")
        ax.set_xscale("log")
        ax.set_xlabel("ε at δ = 1e-5 (RDP, no sampling amplification)")
        ax.set_ylabel("test macro-F1")
        ax.legend()
        save_plot(fig, ax, out / "robustness_dp.png")
    print(f"\n{out / 'robustness.md'}:\n" + "\n".join(lines))


