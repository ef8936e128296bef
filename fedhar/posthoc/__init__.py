"""Post-hoc adapters: optional client-side steps after the model (e.g. re-splitting a confused class pair).

They sit outside training and the round loop, which carry one only through the interface in ``base``.
"""

from fedhar.posthoc import pair_calibration  # noqa: F401  (registers `pair-calibration`)
from fedhar.posthoc.base import (REGISTRY, PostHocAdapter, PostHocConfig, check_stored, configured, from_record,
                                 register, stored_adapter, stored_record)  # fmt: skip

__all__ = ["REGISTRY", "PostHocAdapter", "PostHocConfig", "check_stored", "configured", "from_record", "register",
           "stored_adapter", "stored_record"]
