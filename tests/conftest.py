"""Shared fixtures: real image folders on disk and a private cache directory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ASL_CLASSES: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + ("del", "nothing", "space")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep zip extraction and other caches out of the user's home directory."""
    monkeypatch.setenv("ASLQUANT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def class_color(index: int) -> tuple[int, int, int]:
    """A distinct, deterministic colour per class index."""
    return ((index * 67) % 256, (index * 151 + 40) % 256, (index * 29 + 90) % 256)


@pytest.fixture
def tmp_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing small JPEGs: ``make(classes, per_class, layout, size, name)``.

    ``layout="imagefolder"`` writes ``root/<class>/<class><k>.jpg``; ``layout="flat"`` writes
    ``root/<class>_<k>.jpg``. Each class has its own colour plus seeded noise, so images differ.
    """

    def make(
        classes: Sequence[str] = ("A", "B", "C"),
        per_class: int = 4,
        layout: str = "imagefolder",
        size: tuple[int, int] = (32, 32),
        name: str = "images",
        seed: int = 0,
    ) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        for ci, cls in enumerate(classes):
            for k in range(per_class):
                base = np.array(class_color(ci), dtype=np.int16)
                noise = rng.integers(-20, 21, size=(size[1], size[0], 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                if layout == "imagefolder":
                    path = root / cls / f"{cls}{k}.jpg"
                elif layout == "flat":
                    path = root / f"{cls}_{k}.jpg"
                else:
                    raise ValueError(f"unknown layout {layout!r}")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels, "RGB").save(path, quality=95)
        return root

    return make


@pytest.fixture(scope="session", autouse=True)
def _runtime(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The process-wide settings the app and the CLI apply at start-up (aslquant.runtime)."""
    from aslquant import runtime

    runtime.configure(tmp_path_factory.getbasetemp() / "cache")


def pytest_configure(config: pytest.Config) -> None:
    """Give each xdist worker its own share of the cores, so that two workers' torch thread
    pools do not fight over the same cores (2 workers x 2 threads on 2 cores: the unit tests
    took 13 min 16 s, and 9 min 10 s with a core each). Runs default to the usable cores
    (engine_lock.default_threads)."""
    import os

    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < count:
        return
    share = set(cpus[int(worker[2:]) % count :: count])
    # Every thread already started (the affinity call applies to one thread), then the
    # process's later threads inherit it from the main thread.
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), share)
        except OSError:
            pass
    import torch

    torch.set_num_threads(len(share))
