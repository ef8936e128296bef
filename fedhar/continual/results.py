"""A continual run's results: the accuracy matrix and what it says, as files a user can open.

``continual.json`` (matrices R[i][j] -- after stage i, on domain j -- in macro-F1 and accuracy for the
validation and test subjects, the scores of the untrained model, average / forgetting / BWT / FWT,
per-class forgetting, the worst held-out subject after each stage, bytes per stage), ``continual.csv``
(the same matrix, one row per cell), ``accuracy_matrix.png`` and ``continual_curves.png`` (every
domain's test macro-F1 per round, stage boundaries dashed).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedhar.config import ExperimentConfig
from fedhar.continual.metrics import continual_metrics, per_class_forgetting, worst_subject
from fedhar.continual.plots import plot_accuracy_matrix, plot_domain_curves
from fedhar.continual.schedule import stage_last_rounds
from fedhar.results.run import RunDir

SPLITS = ("test", "val")
SCORES = ("macro_f1", "accuracy")


def matrices(record: dict, domains: list[str], split: str, score: str) -> list[list[float]]:
    """Rows of R for the stages that ended (a run stopped early has fewer rows than domains)."""
    rows = []
    for i in range(len(domains)):
        row = record["after_stage"].get(str(i), {}).get(split)
        if row is None:
            break
        rows.append([row[d][score] for d in domains])
    return rows


def write_continual(run: RunDir, cfg: ExperimentConfig, record: dict, rounds: list[dict]) -> dict:
    """Write the continual results files into ``run``; returns the summary that goes into ``metrics.json``."""
    domains = cfg.continual.stage_names
    out: dict = {"method": cfg.continual.method, "domains": domains,
                 "stages": [{**dataclasses.asdict(s), "name": n} for n, s in zip(domains, cfg.continual.stages)],
                 "matrix": {}, "initial": {}, "metrics": {}}  # fmt: skip
    complete = False
    for split in SPLITS:
        if not any(split in row for row in record["after_stage"].values()):
            continue
        out["matrix"][split], out["initial"][split], out["metrics"][split] = {}, {}, {}
        initial = (record.get("initial") or {}).get(split)
        for score in SCORES:
            R = matrices(record, domains, split, score)
            out["matrix"][split][score] = R
            b = [initial[d][score] for d in domains] if initial else None
            out["initial"][split][score] = b
            if len(R) == len(domains):
                out["metrics"][split][score] = continual_metrics(np.asarray(R), b)
                complete = True
        if len(matrices(record, domains, split, "macro_f1")) == len(domains):
            out["metrics"][split]["per_class_forgetting"] = _per_class(record, domains, split)
        out["metrics"][split]["worst_subject_after_stage"] = _worst_subjects(record, domains, split)
    out["complete"] = complete
    out["bytes_per_stage"] = _bytes(cfg, rounds, len(domains))
    run.write_json("continual.json", out)
    run.write_csv("continual.csv", _cells(record, domains))
    test = "test" if "test" in out["matrix"] else "val"
    if out["matrix"].get(test, {}).get("macro_f1"):
        panels = {f"{test} {s.replace('_', '-')}": out["matrix"][test][s] for s in SCORES}
        plot_accuracy_matrix(panels, domains, run.file("accuracy_matrix.png"),
                             f"{cfg.name}: {cfg.continual.method}")  # fmt: skip
    if rounds:
        curves = {d: [r.get(f"{test}_macro_f1@{d}") for r in rounds] for d in domains}
        ends = [e + 0.5 for e in stage_last_rounds(cfg)[:-1]]
        plot_domain_curves([r["round"] for r in rounds], curves, ends, run.file("continual_curves.png"),
                           f"{cfg.name}: {cfg.continual.method}", ylabel=f"{test} macro-F1")  # fmt: skip
    summary = {"method": cfg.continual.method, "complete": complete}
    for split, by_score in out["metrics"].items():
        if "macro_f1" in by_score:
            m = by_score["macro_f1"]
            summary[split] = {k: m[k] for k in ("final_average", "forgetting", "max_forgetting", "bwt", "fwt")}
            summary[split]["final_average_accuracy"] = by_score["accuracy"]["final_average"]
    summary["bytes_per_client_per_round"] = (
        float(np.mean([r["bytes_per_client"] for r in rounds])) if rounds else None
    )
    return summary


def _per_class(record: dict, domains: list[str], split: str) -> dict:
    classes = sorted({c for row in record["after_stage"].values() for d in row.get(split, {}).values()
                      for c in d["per_class_f1"]})  # fmt: skip
    T = len(domains)
    table = np.full((T, T, len(classes)), np.nan)
    for i in range(T):
        row = record["after_stage"][str(i)][split]
        for j, d in enumerate(domains):
            for k, c in enumerate(classes):
                value = row[d]["per_class_f1"].get(c)
                if value is not None:
                    table[i, j, k] = value
    return per_class_forgetting(table, classes)


def _worst_subjects(record: dict, domains: list[str], split: str) -> list[dict]:
    """After stage i: each held-out subject's macro-F1 averaged over the domains seen so far; the lowest."""
    out = []
    for i in range(len(domains)):
        row = record["after_stage"].get(str(i), {}).get(split)
        if row is None:
            break
        scores: dict[str, list[float]] = {}
        for d in domains[: i + 1]:
            for subject, value in row[d]["by_subject"].items():
                scores.setdefault(subject, []).append(value)
        subject, value = worst_subject({s: float(np.mean(v)) for s, v in scores.items()})
        out.append({"after_stage": domains[i], "subject": subject, "macro_f1": value})
    return out


def _bytes(cfg: ExperimentConfig, rounds: list[dict], stages: int) -> list[dict]:
    out = []
    for s in range(stages):
        rows = [r for r in rounds if r.get("stage") == s]
        if not rows:
            continue
        out.append({"stage": cfg.continual.stage_names[s], "rounds": len(rows),
                    "bytes_total": int(sum(r["bytes_total"] for r in rows)),
                    "bytes_per_client_per_round": float(np.mean([r["bytes_per_client"] for r in rows]))})  # fmt: skip
    return out


def _cells(record: dict, domains: list[str]) -> list[dict]:
    cells = []
    entries = [("initial", "untrained", record.get("initial") or {})]
    entries += [(str(i), domains[int(i)], record["after_stage"][i]) for i in sorted(record["after_stage"], key=int)]
    for index, name, row in entries:
        for split, by_domain in row.items():
            for d in domains:
                if d in by_domain:
                    cells.append({"after_stage": index, "after_stage_name": name, "domain": d, "split": split,
                                  "macro_f1": by_domain[d]["macro_f1"], "accuracy": by_domain[d]["accuracy"]})  # fmt: skip
    return cells
