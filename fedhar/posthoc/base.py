"""What every post-hoc adapter offers, and the registry that finds one by name.

Training, the round loop, the centralized trainer and inference carry an adapter only through this
interface (and store it as ``{"name", "state"}``), so a new adapter is a new module, not a new branch in them.

An adapter has two halves. Its *config* (``train.posthoc: {name: ..., <options>}``, a typed dataclass) says how
to fit it: from labelled training windows, or -- in a federation -- from statistics each client computes on its
own windows and sends once, at setup, which the server sums and fits from (no window leaves a client). The
fitted *adapter* is what travels to clients and is stored with the checkpoint (``to_json`` / ``from_json``);
a client, ``fedhar evaluate`` and ``fedhar predict`` apply it to the model's labels of a client's windows.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedhar.config import from_dict
from fedhar.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from fedhar.config import ExperimentConfig
    from fedhar.data.recording import SensorLayout
    from fedhar.data.windows import WindowSet

#: names, shapes and dtypes of the statistics a client sends at setup (checked before they are summed)
StatisticsSpec = dict[str, tuple[tuple[int, ...], np.dtype]]


class PostHocAdapter(ABC):
    """A fitted client-side step after the model: re-labels one client's windows from those windows alone."""

    name: ClassVar[str]  # its registry name (train.posthoc.name)
    #: the word its scores go by in reports: ``{split}_{tag}_macro_f1`` per round, ``client_{tag}`` in metrics.json
    tag: ClassVar[str]

    @abstractmethod
    def apply(self, x: np.ndarray, pred: np.ndarray, client: np.ndarray, label_names: list[str],
              layout: SensorLayout) -> tuple[np.ndarray, dict[str, dict]]:  # fmt: skip
        """The model's labels ``pred`` of raw windows ``x`` [N, C, T] after each client (``client``: one id per
        window) adapts them on its own windows, with a report per client."""

    def apply_client(self, x: np.ndarray, pred: np.ndarray, label_names: list[str],
                     layout: SensorLayout) -> tuple[np.ndarray, dict]:  # fmt: skip
        """:meth:`apply` to windows that are all one client's (``fedhar predict``): (labels, that client's report)."""
        labels, reports = self.apply(x, pred, np.zeros(len(pred), dtype=str), label_names, layout)
        return labels, next(iter(reports.values()), {})

    def score(self, ws: WindowSet, pred: np.ndarray) -> dict:
        """Metrics of the model's labels ``pred`` of ``ws`` after every subject (one client each) adapts them,
        with the per-subject reports (``per_subject``)."""
        from fedhar.metrics import classification_metrics

        adapted, per_subject = self.apply(ws.x, pred, ws.subject, list(ws.label_names), ws.layout)
        return {**classification_metrics(ws.y, adapted, list(ws.label_names)), "per_subject": per_subject}

    def describe(self) -> str:
        """What its scores are, in a few words (``fedhar train`` heads them with it)."""
        return self.name

    def clients_summary(self, per_client: dict[str, dict]) -> str:
        """One clause on what it did to the clients of :meth:`score` (``fedhar train`` prints it)."""
        return f"{len(per_client)} clients"

    def report_line(self, report: dict) -> str:
        """One line on what it did to one client's windows (:meth:`apply_client`'s report; ``fedhar predict``)."""
        return f"{self.name}: {report}"

    @abstractmethod
    def to_json(self) -> dict:
        """The fitted state, as JSON (sent to clients, stored with the checkpoint)."""

    @classmethod
    @abstractmethod
    def from_json(cls, state: dict) -> PostHocAdapter:
        """The adapter from :meth:`to_json` (a checkpoint's: checked by :meth:`check_stored` first)."""

    @classmethod
    def check_stored(cls, fields: Any, state: Any, where: str, labels: list[str], channels: int) -> None:
        """Validate a checkpoint's stored state before anything reads it (``fedhar.model.state.check_info``):
        ``fields`` is its field checker, ``where`` the field's dotted path in ``model.json``."""
        fields.mapping(state, where)

    def record(self) -> dict:
        """What a checkpoint, a message or metrics.json holds of it: its name and fitted state."""
        return {"name": self.name, "state": self.to_json()}


class PostHocConfig(ABC):
    """How to fit one adapter (subclasses are dataclasses of its ``train.posthoc`` options)."""

    name: ClassVar[str]
    adapter: ClassVar[type[PostHocAdapter]]
    #: the model.json key of the state an older fedhar stored before ``posthoc`` (None: always ``posthoc``)
    legacy_checkpoint_key: ClassVar[str | None] = None

    @abstractmethod
    def check(self, label_names: list[str]) -> None:
        """Fail (ConfigError) before any training when data of these classes cannot fit it."""

    @abstractmethod
    def statistics(self, windows: WindowSet) -> dict[str, np.ndarray]:
        """What a client sends at setup, from its labelled training windows: float64 sums that add up across
        clients, so the server fits what one pooled dataset would give."""

    @abstractmethod
    def statistics_spec(self, layout: SensorLayout) -> StatisticsSpec:
        """Names, shapes and dtypes of :meth:`statistics` for data of ``layout``."""

    def check_statistics(self, stats: dict[str, np.ndarray], num_windows: int) -> None:
        """Fail (ValueError) when one client's statistics are impossible for ``num_windows`` windows."""

    @abstractmethod
    def from_statistics(self, totals: dict[str, np.ndarray]) -> PostHocAdapter:
        """The adapter fitted from the clients' summed :meth:`statistics` (the server's side)."""

    def fit(self, windows: WindowSet) -> PostHocAdapter:
        """The adapter fitted on labelled windows (centralized training): one client holding them all."""
        return self.from_statistics(self.statistics(windows))


#: registered adapters by name
REGISTRY: dict[str, type[PostHocConfig]] = {}


def register(config: type[PostHocConfig]) -> type[PostHocConfig]:
    """Class decorator: make an adapter's config (and through it the adapter) known by its ``name``."""
    if config.name in REGISTRY and REGISTRY[config.name] is not config:
        raise ValueError(f"a post-hoc adapter named `{config.name}` is already registered")
    if config.adapter.name != config.name:
        raise ValueError(f"{config.__name__} fits {config.adapter.__name__}, named `{config.adapter.name}`, "
                         f"not `{config.name}`")  # fmt: skip
    REGISTRY[config.name] = config
    return config


def _lookup(name: Any, where: str, error: type[Exception] = ConfigError) -> type[PostHocConfig]:
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise error(f"{where} `{name}` is not a post-hoc adapter; {hint}known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def configured(cfg: ExperimentConfig) -> PostHocConfig | None:
    """``train.posthoc`` as its adapter's typed config (None when unset); an unknown name or option is a
    ConfigError naming the known ones."""
    options = cfg.train.posthoc
    if options is None:
        return None
    config = _lookup(options.get("name"), "train.posthoc.name")
    return from_dict(config, {k: v for k, v in options.items() if k != "name"}, "train.posthoc")


def from_record(record: dict, where: str = "post-hoc adapter") -> PostHocAdapter:
    """An adapter from its :meth:`PostHocAdapter.record` (a message's, a checkpoint's)."""
    if not isinstance(record, dict) or not isinstance(record.get("state"), dict):
        raise CheckpointError(f"{where}: expected {{name, state}}, got {type(record).__name__}")
    return _lookup(record.get("name"), f"{where}: name", CheckpointError).adapter.from_json(record["state"])


def stored_record(info: dict) -> tuple[dict, str] | None:
    """The adapter record a checkpoint's ``model.json`` stores, with the key it is stored under (None: none).

    A checkpoint written before ``posthoc`` existed stores its adapter's state under the adapter's legacy key."""
    if info.get("posthoc") is not None:
        return info["posthoc"], "posthoc"
    for name, config in REGISTRY.items():
        key = config.legacy_checkpoint_key
        if key is not None and info.get(key) is not None:
            return {"name": name, "state": info[key]}, key
    return None


def stored_adapter(info: dict) -> PostHocAdapter | None:
    """The adapter a checkpoint's ``model.json`` (``read_checkpoint_info``) stores, if any."""
    found = stored_record(info)
    return None if found is None else from_record(found[0], f"the checkpoint's {found[1]}")


def check_stored(fields: Any, info: dict, labels: list[str], channels: int) -> None:
    """Validate the adapter a ``model.json`` stores (``fedhar.model.state.check_info``), if any."""
    found = stored_record(info)
    if found is None:
        return
    record, key = found
    if key == "posthoc":
        record = fields.mapping(record, "posthoc")
        name = fields.text(fields.require(record, "name", "posthoc"), "posthoc.name")
        if name not in REGISTRY:
            raise fields.fail("posthoc.name", f"is `{name}`, not a post-hoc adapter (known: {sorted(REGISTRY)})")
        REGISTRY[name].adapter.check_stored(fields, fields.require(record, "state", "posthoc"), "posthoc.state",
                                            labels, channels)  # fmt: skip
    else:
        REGISTRY[record["name"]].adapter.check_stored(fields, record["state"], key, labels, channels)
