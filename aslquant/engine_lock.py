"""Process-wide quantized-engine and thread settings, made safe for concurrent sessions.

``torch.backends.quantized.engine`` and ``torch.set_num_threads`` are global to the process,
while Streamlit serves every browser from one process. Any work whose result depends on them
(preparing, converting, running or timing a quantized model) runs inside ``engine_session``,
which holds one re-entrant lock, sets the engine and thread count, and restores both after.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch

_LOCK = threading.RLock()


def default_threads() -> int:
    """Threads used for every measurement: all cores, at most 4 (recorded in each report)."""
    return max(1, min(4, os.cpu_count() or 1))


@contextlib.contextmanager
def engine_session(backend: str | None = None, threads: int | None = None) -> Iterator[None]:
    """Hold the engine lock with ``backend`` selected and ``threads`` set; restore on exit."""
    with _LOCK:
        old_engine = torch.backends.quantized.engine
        old_threads = torch.get_num_threads()
        try:
            if backend is not None and backend != old_engine:
                torch.backends.quantized.engine = backend
            if threads is not None and threads != old_threads:
                torch.set_num_threads(threads)
            yield
        finally:
            if torch.backends.quantized.engine != old_engine:
                torch.backends.quantized.engine = old_engine
            if torch.get_num_threads() != old_threads:
                torch.set_num_threads(old_threads)
