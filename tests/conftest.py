"""Shared test fixtures: the real HAPT copy (skipped where absent) and small synthetic window sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HAPT = Path(os.environ.get("FEDHAR_HAPT", REPO.parent / "shared" / "data" / "hapt-train"))
BASIC6 = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING"]

requires_hapt = pytest.mark.skipif(
    not (HAPT / "RawData" / "labels.txt").is_file(),
    reason=f"real HAPT recordings not found at {HAPT} (../shared/data/hapt-train beside the repo, or $FEDHAR_HAPT)",
)


@pytest.fixture(autouse=True)
def _isolated_window_cache(tmp_path_factory, monkeypatch):
    """Window caches go to a temp folder; backbone caches stay shared (they are read-only inputs)."""
    monkeypatch.setenv("FEDHAR_WINDOW_CACHE", str(tmp_path_factory.getbasetemp() / "windows"))


@pytest.fixture
def tiny_windows():
    """A small, learnable 6-axis window set: 3 classes with different frequencies, 4 subjects."""
    from fedhar.data.recording import IMU6
    from fedhar.data.windows import WindowSet

    rng = np.random.default_rng(0)
    n, t = 96, 32
    y = np.arange(n) % 3
    time = np.arange(t) / 50.0
    x = np.stack([np.sin(2 * np.pi * (1 + 2 * c) * time + rng.uniform(0, 6)) for c in y])[:, None, :]
    x = (x * np.ones((1, 6, 1)) + 0.1 * rng.standard_normal((n, 6, t))).astype(np.float32)
    subject = np.array([str(i % 4 + 1) for i in range(n)])
    return WindowSet(
        x=x, y=y.astype(np.int64), label_names=["slow", "mid", "fast"], layout=IMU6, sample_rate=50.0,
        subject=subject, dataset=np.full(n, "toy"), device=np.full(n, "dev"), placement=np.full(n, "waist"),
        session=subject, start_s=np.zeros(n),
    )


@pytest.fixture
def posture_run(tiny_windows, tmp_path):
    """A `fedhar train`-like run folder (untrained DeepConvLSTM checkpoint + config.yaml) whose classes
    include SITTING and STANDING; data in an .npz, subjects 1 2 train, 3 validates, 4 tests."""
    import dataclasses

    from fedhar.config import ExperimentConfig, ModelConfig, save_config
    from fedhar.model.har_model import DataSpec, build_model
    from fedhar.model.state import save_checkpoint

    ws = dataclasses.replace(tiny_windows, label_names=["SITTING", "STANDING", "LAYING"])
    ws.save(tmp_path / "w.npz")
    run = tmp_path / "base-s0"
    save_checkpoint(build_model(ModelConfig(kind="deepconvlstm", hidden=16), DataSpec.from_windows(ws)), run / "checkpoint")
    cfg = ExperimentConfig()
    cfg.data.path = str(tmp_path / "w.npz")
    cfg.data.split.train, cfg.data.split.val, cfg.data.split.test = ["1", "2"], ["3"], ["4"]
    save_config(cfg, run / "config.yaml")
    return run
