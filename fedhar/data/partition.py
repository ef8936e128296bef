"""Federated partitions of a training window set: which windows each simulated client holds.

Schemes (the names of ``federated.partition``):

* ``subject``   one client per subject, the natural HAR federation (a person's own phone);
* ``device``    one client per device model;
* ``placement`` one client per body placement;
* ``dirichlet`` label skew (Hsu et al. 2019): each class's windows are split over
  ``num_clients`` by proportions drawn from Dirichlet(``alpha``); the smaller ``alpha``, the
  fewer classes a client sees;
* ``iid``       a uniform random split into ``num_clients`` (equal sizes ±1 without quantity skew).

**Minimum size** (dirichlet, iid): every client gets at least
``min(MIN_CLIENT_WINDOWS, N // num_clients)`` windows. After the random draw, a client below
that takes random windows from the currently largest client until it reaches it; so a client
can always form a batch, at the cost of slightly weaker skew for the smallest clients.

**Quantity skew** (dirichlet, iid): ``quantity_skew = σ`` draws a weight ``w_k ~ LogNormal(0, σ)``
per client. ``iid`` sizes are proportional to ``w_k`` (after the minimum); ``dirichlet`` scales
client k's share of every class by ``w_k`` before normalising, so label and quantity skew
combine. σ = 0 is no quantity skew; σ = 1 makes the largest client roughly 10-30× the smallest
of 10-20 clients. The natural schemes keep their natural sizes and reject ``quantity_skew``.

Everything is seeded; a partition returns sorted window indices per client, disjoint and
covering the whole window set.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from fedhar.data.recording import natural_key
from fedhar.data.windows import WindowSet
from fedhar.errors import ConfigError, DataError

SCHEMES = ("subject", "dirichlet", "device", "placement", "iid")

#: schemes with one client per value of a window tag
NATURAL = ("subject", "device", "placement")

#: windows every dirichlet / iid client gets at least (capped at N // num_clients)
MIN_CLIENT_WINDOWS = 10


def partition(
    ws: WindowSet,
    scheme: str,
    num_clients: int | None = None,
    alpha: float = 0.3,
    quantity_skew: float | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Window indices per client (sorted, disjoint, together covering ``ws``)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme `{scheme}`; use one of {list(SCHEMES)}")
    if len(ws) == 0:
        raise DataError("cannot partition an empty window set; check the split and class selection")
    if quantity_skew is not None and quantity_skew < 0:
        raise ConfigError(f"federated.quantity_skew must be >= 0 (log-normal σ of client sizes), got {quantity_skew}")
    if scheme in NATURAL:
        return _natural(ws, scheme, num_clients, quantity_skew)
    if num_clients is None:
        raise ConfigError(f"federated.partition={scheme} needs federated.num_clients (how many clients to split into)")
    if num_clients < 1:
        raise ConfigError(f"federated.num_clients must be >= 1, got {num_clients}")
    if num_clients > len(ws):
        raise ConfigError(
            f"federated.num_clients={num_clients} but the training split has only {len(ws)} windows: the data can "
            f"give at most {len(ws)} clients (one window each); use fewer clients or more data"
        )
    rng = np.random.default_rng(seed)
    weights = _quantity_weights(num_clients, quantity_skew, rng)
    if scheme == "dirichlet":
        if not alpha > 0:
            raise ConfigError(f"federated.alpha must be positive (Dirichlet concentration), got {alpha}")
        assign = _dirichlet(ws.y, num_clients, alpha, weights, rng)
    else:
        assign = _iid(len(ws), num_clients, weights, rng)
    _ensure_minimum(assign, num_clients, min(MIN_CLIENT_WINDOWS, len(ws) // num_clients), rng)
    return [np.flatnonzero(assign == k) for k in range(num_clients)]


def client_names(ws: WindowSet, scheme: str, parts: list[np.ndarray]) -> list[str]:
    """Stable client names: ``subject-7``, ``device-phone-b``, ``placement-wrist``, ``client-03``."""
    if scheme in NATURAL:
        tags = getattr(ws, scheme)
        return [f"{scheme}-{tags[p[0]]}" if len(p) else f"{scheme}-empty-{i}" for i, p in enumerate(parts)]
    width = max(2, len(str(len(parts) - 1)))
    return [f"client-{i:0{width}d}" for i in range(len(parts))]


def _natural(ws: WindowSet, tag: str, num_clients: int | None, quantity_skew: float | None) -> list[np.ndarray]:
    col = getattr(ws, tag)
    values = sorted(set(col.tolist()), key=natural_key)
    if num_clients is not None and num_clients != len(values):
        raise ConfigError(
            f"federated.partition={tag} makes one client per {tag} ({len(values)} here), but "
            f"federated.num_clients={num_clients}; drop num_clients or use dirichlet/iid"
        )
    if quantity_skew:
        raise ConfigError(
            f"federated.quantity_skew applies to dirichlet and iid; {tag} clients keep their natural sizes"
        )
    return [np.flatnonzero(col == v) for v in values]


def _quantity_weights(k: int, sigma: float | None, rng: np.random.Generator) -> np.ndarray:
    if not sigma:
        return np.ones(k)
    return rng.lognormal(0.0, sigma, k)


def _dirichlet(y: np.ndarray, k: int, alpha: float, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Client id per window: each class split over clients by Dirichlet(alpha) proportions × size weights."""
    assign = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        share = rng.dirichlet(np.full(k, alpha)) * weights
        share /= share.sum()
        cuts = (np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
        for client, chunk in enumerate(np.split(idx, cuts)):
            assign[chunk] = client
    return assign


def _iid(n: int, k: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Client id per window for a uniform random split with sizes ∝ weights (largest remainder)."""
    minimum = min(MIN_CLIENT_WINDOWS, n // k)
    exact = (n - minimum * k) * weights / weights.sum()
    sizes = minimum + np.floor(exact).astype(np.int64)
    remainder = n - sizes.sum()
    sizes[np.argsort(-(exact - np.floor(exact)), kind="stable")[:remainder]] += 1
    assign = np.repeat(np.arange(k), sizes)
    return assign[rng.permutation(n)]


def _ensure_minimum(assign: np.ndarray, k: int, minimum: int, rng: np.random.Generator) -> None:
    """Move random windows from the largest client to each client below ``minimum`` (in place)."""
    counts = np.bincount(assign, minlength=k)
    for client in np.flatnonzero(counts < minimum):
        while counts[client] < minimum:
            donor = int(counts.argmax())
            take = min(minimum - counts[client], counts[donor] - minimum)
            moved = rng.choice(np.flatnonzero(assign == donor), take, replace=False)
            assign[moved] = client
            counts[donor] -= take
            counts[client] += take


def label_entropy(counts: np.ndarray) -> float:
    """Label entropy of one client normalised by log(num classes): 1 = balanced, 0 = a single class."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0 or len(counts) < 2:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(len(counts)))


# ---- summaries -----------------------------------------------------------------------------


def partition_summary(
    ws: WindowSet, parts: list[np.ndarray], names: list[str], out_dir: str | Path, title: str
) -> dict:
    """Write the clients × classes table (``<slug>.csv``, ``<slug>.json``) and a chart (``<slug>.png``).

    ``<slug>`` is the title in lower case with non-alphanumerics as ``-``. Returns the table.
    """
    if len(names) != len(parts):
        raise DataError(f"{len(names)} client names for {len(parts)} clients")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "partition"
    counts = np.stack([np.bincount(ws.y[p], minlength=ws.num_classes) for p in parts])
    sizes = counts.sum(axis=1)
    entropy = [label_entropy(row) for row in counts]
    clients = [
        {
            "name": name,
            "windows": int(size),
            "counts": row.tolist(),
            "classes_present": int((row > 0).sum()),
            "label_entropy": round(h, 4),
            "subjects": sorted(set(ws.subject[p].tolist()), key=natural_key),
        }
        for name, row, size, h, p in zip(names, counts, sizes, entropy, parts)
    ]
    table = {
        "title": title,
        "synthetic": bool(ws.synthetic),
        "datasets": sorted(set(ws.dataset.tolist())),
        "classes": list(ws.label_names),
        "num_clients": len(parts),
        "total_windows": int(sizes.sum()),
        "windows_per_client": {
            "min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max()),
            "mean": round(float(sizes.mean()), 2),
        },  # fmt: skip
        "mean_label_entropy": round(float(np.mean(entropy)), 4),
        "mean_classes_present": round(float((counts > 0).sum(axis=1).mean()), 3),
        "class_totals": counts.sum(axis=0).tolist(),
        "clients": clients,
        "files": {ext: str(out / f"{slug}.{ext}") for ext in ("csv", "json", "png")},
    }
    with open(out / f"{slug}.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["client", *ws.label_names, "total", "label_entropy"])
        for c in clients:
            writer.writerow([c["name"], *c["counts"], c["windows"], c["label_entropy"]])
    (out / f"{slug}.json").write_text(json.dumps(table, indent=2))
    shown_title = title + (" (synthetic data)" if ws.synthetic else "")
    _plot(counts, names, list(ws.label_names), shown_title, out / f"{slug}.png")
    return table


def _plot(counts: np.ndarray, names: list[str], classes: list[str], title: str, path: Path) -> None:
    """Stacked bars of windows per client and a heatmap of each client's class shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, c = counts.shape
    height = max(3.2, 0.32 * k + 1.8)
    fig, (bars, heat) = plt.subplots(
        1, 2, figsize=(13, height), gridspec_kw={"width_ratios": [1.1, 1]}, constrained_layout=True
    )
    colors = plt.get_cmap("tab10" if c <= 10 else "tab20")(np.arange(c))
    rows = np.arange(k)
    left = np.zeros(k)
    for j in range(c):
        bars.barh(rows, counts[:, j], left=left, color=colors[j], label=classes[j], height=0.8)
        left += counts[:, j]
    for i, total in enumerate(left):
        bars.text(total, i, f" {int(total)}", va="center", fontsize=7)
    bars.set_xlim(0, left.max() * 1.1)
    bars.set_yticks(rows, names, fontsize=8 if k > 20 else 9)
    bars.invert_yaxis()
    bars.set_xlabel("windows")
    bars.set_title("windows per client, by class", fontsize=10)
    bars.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12 if k > 6 else -0.22), ncol=3, frameon=False)
    bars.grid(axis="x", alpha=0.3)

    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = heat.imshow(shares, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    heat.set_xticks(np.arange(c), classes, rotation=30, ha="right", fontsize=8)
    heat.set_yticks(rows, names, fontsize=8 if k > 20 else 9)
    heat.set_title("class share within each client", fontsize=10)
    if k * c <= 400:
        for i in range(k):
            for j in range(c):
                share = shares[i, j]
                label = "·" if not counts[i, j] else ("<1%" if share < 0.005 else f"{share:.0%}")
                heat.text(j, i, label, ha="center", va="center",
                          fontsize=7, color="white" if share < 0.6 else "black")  # fmt: skip
    fig.colorbar(image, ax=heat, fraction=0.04, label="share")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
