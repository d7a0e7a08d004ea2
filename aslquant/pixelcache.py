"""Decoded, resized images kept in memory once per model input geometry, shared by every pass.

A dashboard run reads the evaluation images several times: the FP32 baseline, the quantized
model, timing, analyses, other recipes. Decoding and resizing a 224 px JPEG costs about as much
as running the INT8 model on it, so the pixels after the geometric steps of preprocessing
(resize, crop, channel order: uint8, 150 kB at 224 px) are kept in a bounded, least-recently-used
cache keyed by the file's path, size and modification time and the geometry. Normalization is
applied per batch, so preprocessing settings that only change scale or mean/std reuse the pixels.
Unreadable files are remembered with their reason, so they are not decoded again either.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

#: Default budget (MiB): ~5,000 images at 224 px. ``ASLQUANT_PIXEL_CACHE_MB`` overrides it.
DEFAULT_BUDGET_MB = 768


class Unreadable(str):
    """A cached refusal: the reason an image could not be used."""


class PixelCache:
    """Thread-safe LRU of uint8 arrays (or Unreadable reasons), bounded by total bytes."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self._items: OrderedDict[Hashable, np.ndarray | Unreadable] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> np.ndarray | Unreadable | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: np.ndarray | Unreadable) -> None:
        size = value.nbytes if isinstance(value, np.ndarray) else len(value)
        if size > self.budget:
            return
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared by every reader
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes if isinstance(old, np.ndarray) else len(old)
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.budget:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes if isinstance(dropped, np.ndarray) else len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


def _budget() -> int:
    try:
        mb = int(os.environ.get("ASLQUANT_PIXEL_CACHE_MB", DEFAULT_BUDGET_MB))
    except ValueError:
        mb = DEFAULT_BUDGET_MB
    return max(0, mb) * 1024 * 1024


#: The process's cache (the dashboard serves every browser from one process).
PIXELS = PixelCache(_budget())
