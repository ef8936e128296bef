"""Where fedhar keeps downloaded backbones and windowed arrays (``$FEDHAR_CACHE`` or ~/.cache/fedhar)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("FEDHAR_CACHE") or Path.home() / ".cache" / "fedhar").expanduser()
