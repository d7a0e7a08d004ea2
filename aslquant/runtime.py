"""Every process-wide setting aslquant relies on, in one named function: ``configure()``.

Importing aslquant changes nothing in the process. The dashboard (app.py), the CLI and the test
suite call ``configure()`` once at start-up; a library user who wants the same behaviour calls it
too. What it sets, and why:

* warning filters: torch 2.13 warns on every use of the eager/FX quantization APIs that they
  move to torchao. They still work and this tool uses them deliberately; the filters are narrow
  (those messages only), so every other warning still shows.
* logger levels: torchao's import logs missing CUDA kernels and a pytree deprecation notice,
  irrelevant on this CPU-only tool; torch.profiler's Kineto prints lines to stderr per session.
* Pillow's decompression-bomb limit, set to aslquant's own pixel limit (the image loader also
  checks it itself, so this is belt and braces for any other Pillow use in the process).
* Inductor freezing: lets torch.compile fold the pt2e INT8 weights into prepacked oneDNN
  convolutions; without it the graph dequantizes every weight on every call (measured 6.4 ms vs
  2.8 ms at batch 1). It must be the global setting: passed as a torch.compile option the prepack
  op is left in the graph and lowering fails.
* where compilers and runtimes may write: Inductor's cache, Python's temporary folder and the
  XDG cache folder (where ONNX Runtime keeps its telemetry files; telemetry is switched off)
  point inside aslquant's cache folder, so a run writes nothing outside its output and cache
  folders.
* glibc's allocator keeps large blocks on its heap instead of mapping and unmapping each one.
  By default every tensor over its mmap threshold (a batch of activations is 20-200 MB) gets
  fresh pages from the kernel and gives them back when freed, so each forward pass page-faults
  its whole working set again: four untimed runs on 168 images spent 5.5 s of CPU in the kernel
  (2.8 million page faults) beside 11.4 s of user time; with large blocks reused, 0.8 s and
  10.0 s (bench/allocator.py). The price is resident memory: bench/memory.py measured 458 MB
  after warm-up instead of 420 MB (the growth over 10 runs stayed 75 MB).
  ``release_memory()`` still hands freed memory back after each run.

``release_memory()`` hands memory freed by a run back to the operating system.
"""

from __future__ import annotations

import ctypes
import logging
import os
import tempfile
import warnings
from pathlib import Path

_CONFIGURED: dict[str, object] = {}


def cache_root() -> Path:
    """aslquant's cache folder: ``$ASLQUANT_CACHE_DIR``, else ``~/.cache/aslquant``."""
    env = os.environ.get("ASLQUANT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "aslquant"


def _quiet_warnings() -> None:
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.ao\..*")
    # Deprecation notices torch 2.13 raises as UserWarning from inside torch.ao and its kernels.
    warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
    warnings.filterwarnings(
        "ignore", message=r".*quantized tensor creation functions.*deprecated.*"
    )
    warnings.filterwarnings("ignore", message=r".*Please use quant_min and quant_max.*")
    # Notices from torch's own internals, about nothing a user can change: TorchScript tracing
    # an exported copy, and Inductor's oneDNN lowering of a pt2e graph.
    warnings.filterwarnings(
        "ignore", message=r".*TorchScript type system doesn't support instance-level annotations.*"
    )
    warnings.filterwarnings(
        "ignore", message=r".*To copy construct from a tensor.*", module=r"torch\._inductor\..*"
    )


def _quiet_loggers() -> None:
    # torchao's import registers an Enum with torch's pytree, which logs a deprecation notice;
    # it also logs that its CUDA kernels are missing.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    logging.getLogger("torchao").setLevel(logging.ERROR)


def _writable_places(root: Path) -> None:
    """Point compiler caches and temporary files inside ``root``."""
    inductor = root / "inductor"
    tmp = root / "tmp"
    for path in (inductor, tmp):
        path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)
    os.environ["TMPDIR"] = str(tmp)
    # ONNX Runtime keeps a telemetry device id and database under the home folder's cache
    # ($XDG_CACHE_HOME/Microsoft/DeveloperTools): telemetry off, and that folder inside ours.
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    tempfile.tempdir = str(tmp)  # tempfile caches gettempdir(); reset it to the new folder


def configure(cache_dir: str | Path | None = None) -> None:
    """Apply every process-wide setting aslquant needs (idempotent; see the module docstring).

    ``cache_dir``: aslquant's cache folder (default ``cache_root()``); compiler caches and
    temporary files go below it.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    if _CONFIGURED.get("root") == root:
        return
    _quiet_warnings()
    _quiet_loggers()
    from PIL import Image

    from aslquant.data import MAX_IMAGE_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    _writable_places(root)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    # torch.profiler's Kineto prints two "USDT:" lines per profiling session to stderr.
    os.environ["KINETO_LOG_LEVEL"] = "6"
    _reuse_large_blocks()
    _CONFIGURED["root"] = root


#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: Free memory glibc may keep at the top of its heap before returning it (between runs
#: ``release_memory`` returns it all).
_TRIM_THRESHOLD_BYTES = 1 << 30


def _reuse_large_blocks() -> None:
    """Serve large allocations from the heap, reused across calls (see the module docstring);
    glibc only, elsewhere a no-op."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass


def release_memory() -> None:
    """Hand memory freed by a run back to the operating system (glibc only; else a no-op).

    A run allocates and frees ~20 MB batches from several threads; glibc keeps such memory
    in per-thread arenas, so a long dashboard session's resident size crept up by ~8 MB per
    run although nothing was retained (bench/memory.py: 84 MB after 10 runs, 42 MB with this).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
