"""A common activity set across datasets, so a model trained on one can be scored on another.

Each dataset keeps its own label names (``dws``, ``WALKING_UPSTAIRS``, ``climbingup`` …);
``data.common_labels: true`` renames them through these tables first. Labels with no common
counterpart keep their own name (select classes with ``data.classes``). The common names:
walking, upstairs, downstairs, sitting, standing, lying, running, cycling, jumping, stairs.
"""

from __future__ import annotations

from fedhar.errors import DataError

_UCI = {"WALKING": "walking", "WALKING_UPSTAIRS": "upstairs", "WALKING_DOWNSTAIRS": "downstairs",
        "SITTING": "sitting", "STANDING": "standing", "LAYING": "lying"}  # fmt: skip

TO_COMMON: dict[str, dict[str, str]] = {
    "hapt": _UCI,
    "uci_har": _UCI,
    "motionsense": {"wlk": "walking", "ups": "upstairs", "dws": "downstairs", "sit": "sitting", "std": "standing",
                    "jog": "running"},  # fmt: skip
    "hhar": {"walk": "walking", "stairsup": "upstairs", "stairsdown": "downstairs", "sit": "sitting",
             "stand": "standing", "bike": "cycling"},  # fmt: skip
    "realworld": {"walking": "walking", "climbingup": "upstairs", "climbingdown": "downstairs", "sitting": "sitting",
                  "standing": "standing", "lying": "lying", "running": "running", "jumping": "jumping"},  # fmt: skip
    "wisdm": {"walking": "walking", "jogging": "running", "stairs": "stairs", "sitting": "sitting",
              "standing": "standing"},  # fmt: skip
    "pamap2": {"walking": "walking", "ascending_stairs": "upstairs", "descending_stairs": "downstairs",
               "sitting": "sitting", "standing": "standing", "lying": "lying", "running": "running",
               "cycling": "cycling", "rope_jumping": "jumping"},  # fmt: skip
    "synthetic": _UCI,
}


def common_label_map(dataset: str) -> dict[str, str]:
    """The renaming of ``dataset``'s labels onto the common names."""
    if dataset not in TO_COMMON:
        raise DataError(
            f"no common-activity table for dataset `{dataset}` (tables: {sorted(TO_COMMON)}); "
            "map its labels with `data.label_map` instead of `data.common_labels`"
        )
    return dict(TO_COMMON[dataset])
