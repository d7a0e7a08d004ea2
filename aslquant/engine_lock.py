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


def usable_cores() -> int:
    """Logical cores this process may run on: its CPU affinity (taskset, a cgroup's cpuset), not
    the machine's count, which would oversubscribe a process confined to fewer cores."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_threads() -> int:
    """Threads used for every measurement: the usable cores, at most 4 (recorded in each
    report)."""
    return max(1, min(4, usable_cores()))


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
