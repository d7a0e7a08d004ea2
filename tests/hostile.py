"""Builders of hostile files and a measured subprocess that feeds them to the loaders.

The files are written with ``struct``/``zlib``/``numpy`` directly, so a "3 GB" bomb costs the
test a few MB: a DEFLATE stream of zeros is one full-flushed block repeated, a 2-million-entry
central directory is one numpy structured array, a 3 GiB checkpoint is a sparse file.

``run_cases`` loads each file in ONE child process (so the count of subprocesses stays small)
and reports, per case, what the loader did, how long it took and how far the child's RSS
peaked above its RSS just before the case (the kernel's high-water mark, reset per case; see
``_MEMORY_HELPERS``), after imports and a warm-up load of the demo files. An address-space limit keeps a loader that does not refuse in time
(e.g. the code before the fix) from taking the shared machine down with it.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The checkout whose aslquant the children run (default: this one). Pointing it at another
#: checkout runs the same hostile files against that code: how these tests were shown to fail
#: on the commit before the fix.
CODE_ROOT = Path(os.environ.get("ASLQUANT_HOSTILE_CODE_ROOT", REPO))
#: What a refusal may cost, as the issue states it.
PEAK_MB_BOUND = 300
SECONDS_BOUND = 10.0

# --------------------------------------------------------------------------------------------
# zip records written by hand


@dataclass
class Record:
    """One zip member: ``payload`` as stored in the file, with what the directory declares."""

    name: str
    payload: bytes
    method: int = 0  # 0 stored, 8 deflate
    size: int | None = None  # declared uncompressed size (default: len(payload))
    crc: int | None = None
    zip64: bool = False  # write sizes in a ZIP64 extra field


def deflate_zeros(n_bytes: int, chunk: int = 1 << 20) -> tuple[bytes, int]:
    """A raw DEFLATE stream of ``n_bytes`` zeros and its CRC-32, without holding the zeros.

    After a full flush the compressor's state is reset, so compressing each further MiB of
    zeros gives the same bytes: the stream is one block repeated, then an empty final block.
    """
    assert n_bytes % chunk == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush(zlib.Z_FINISH)
    crc, zeros = 0, bytes(chunk)
    for _ in range(n_bytes // chunk):
        crc = zlib.crc32(zeros, crc)
    return block * (n_bytes // chunk) + tail, crc


def zip_bytes(records: list[Record], comment: bytes = b"") -> bytes:
    """A zip archive (always with ZIP64 end records, as torch.save writes them)."""
    out = io.BytesIO()
    central = []
    for rec in records:
        size = len(rec.payload) if rec.size is None else rec.size
        crc = zlib.crc32(rec.payload) if rec.crc is None else rec.crc
        name = rec.name.encode()
        offset = out.tell()
        extra = b""
        csize32, size32, off32 = len(rec.payload), size, offset
        if rec.zip64:
            extra = struct.pack("<HHQQ", 1, 16, size, len(rec.payload))
            csize32 = size32 = 0xFFFFFFFF
        out.write(
            struct.pack(
                "<4s5H3L2H",
                b"PK\x03\x04",
                45,
                0x800,
                rec.method,
                0,
                0,
                crc,
                csize32,
                size32,
                len(name),
                len(extra),
            )  # fmt: skip
            + name
            + extra
        )
        out.write(rec.payload)
        central.append(
            struct.pack(
                "<4s4B4HL2L5H2L",
                b"PK\x01\x02",
                45,
                3,
                45,
                0,
                0x800,
                rec.method,
                0,
                0,
                crc,
                csize32,
                size32,
                len(name),
                len(extra),
                0,
                0,
                0,
                0,
                off32,
            )  # fmt: skip
            + name
            + extra
        )
    cd_start = out.tell()
    for entry in central:
        out.write(entry)
    return out.getvalue() + end_records(len(records), out.tell() - cd_start, cd_start, comment)


def end_records(entries: int, cd_size: int, cd_start: int, comment: bytes = b"") -> bytes:
    """ZIP64 end record + locator + classic end record for a directory at ``cd_start``."""
    eocd64_at = cd_start + cd_size
    eocd64 = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_start
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd64_at, 1)
    eocd = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, min(entries, 0xFFFF), min(entries, 0xFFFF),
        min(cd_size, 0xFFFFFFFF), min(cd_start, 0xFFFFFFFF), len(comment),
    )  # fmt: skip
    return eocd64 + locator + eocd + comment


def directory_entries_zip(count: int, declared_count: int | None = None) -> bytes:
    """A zip of ``count`` empty folder entries ``d0000000/`` ... (no local headers needed to
    parse it). The central directory is one numpy structured array: 2 million entries in
    about a second."""
    header = np.dtype(
        [
            ("sig", "S4"), ("made", "<u2"), ("need", "<u2"), ("flags", "<u2"),
            ("method", "<u2"), ("time", "<u2"), ("date", "<u2"), ("crc", "<u4"),
            ("csize", "<u4"), ("size", "<u4"), ("nlen", "<u2"), ("xlen", "<u2"),
            ("clen", "<u2"), ("disk", "<u2"), ("iattr", "<u2"), ("eattr", "<u4"),
            ("offset", "<u4"), ("name", "S9"),
        ]
    )  # fmt: skip
    assert header.itemsize == 46 + 9
    cd = np.zeros(count, dtype=header)
    cd["sig"], cd["made"], cd["need"], cd["nlen"] = b"PK\x01\x02", 20, 20, 9
    cd["eattr"] = 0o40755 << 16 | 0x10
    index = np.arange(count)
    digits = np.stack([(index // 10**k) % 10 + 48 for k in range(6, -1, -1)], axis=1)
    names = np.concatenate(
        [np.full((count, 1), ord("d")), digits, np.full((count, 1), ord("/"))], axis=1
    ).astype(np.uint8)
    cd["name"] = names.view("S9").reshape(count)
    body = cd.tobytes()
    return body + end_records(declared_count or count, len(body), 0)


# --------------------------------------------------------------------------------------------
# torch checkpoints written by hand


class StorageRef:
    """Stands for a float32 storage record ``data/<key>`` of ``numel`` elements."""

    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class TensorRef:
    """Pickles as torch.save pickles a tensor: ``_rebuild_tensor_v2(storage, ...)``."""

    def __init__(self, storage: StorageRef, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.shape, self.stride = storage, shape, stride

    def __reduce__(self):
        import torch._utils

        args = (self.storage, 0, self.shape, self.stride, False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            import torch

            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj: object) -> bytes:
    """``data.pkl`` as torch.save writes it (protocol 2, storages as persistent ids)."""
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def torch_zip(pickled: bytes, storages: list[Record], prefix: str = "archive") -> bytes:
    """A torch.save-style archive: data.pkl, byteorder, the storages, version."""
    records = [Record(f"{prefix}/data.pkl", pickled), Record(f"{prefix}/byteorder", b"little")]
    for rec in storages:
        rec.name = f"{prefix}/data/{rec.name}"
        records.append(rec)
    records.append(Record(f"{prefix}/version", b"3\n"))
    return zip_bytes(records)


def state_dict_bytes(state: dict) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# the measured child

#: Peak memory of one case: the kernel's high-water mark (VmHWM) is reset to the current RSS
#: before the case (writing 5 to /proc/self/clear_refs, Linux >= 4.0), so the peak after it
#: minus the RSS before it is what that case cost, not masked by earlier, larger peaks.
#: Where the reset is not allowed, ru_maxrss (a process-lifetime high-water mark) is used.
_MEMORY_HELPERS = r"""
def status_kb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return ("hwm", status_kb("VmRSS"))
    except OSError:
        return ("maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

def peak_since(before):
    kind, kb = before
    if kind == "hwm":
        return (status_kb("VmHWM") - kb) / 1024
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - kb) / 1024
"""

_CHILD = (
    r"""
import json, os, resource, sys, time
cases = json.loads(sys.stdin.read())
import torch  # noqa: F401  (imported by every loader; part of the baseline)
from aslquant import data as data_mod
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.model import load_checkpoint
from aslquant.run import DEMO_CHECKPOINT, DEMO_DATA, DEMO_LABELS

names = load_labels(DEMO_LABELS)
load_checkpoint(DEMO_CHECKPOINT, num_labels=len(names))
data_mod.open_image(next(DEMO_DATA.glob("*/*.jpg")))

loaders = {
    "checkpoint": lambda p: load_checkpoint(p, num_labels=len(names)),
    "labels": load_labels,
    "images": lambda p: data_mod.load_image_set(p, names),
    "image": data_mod.open_image,
}

"""
    + _MEMORY_HELPERS
    + r"""

# A loader that fails to refuse must not take the shared machine with it.
limit = status_kb("VmSize") * 1024 + int(os.environ.get("HOSTILE_AS_HEADROOM", 3 << 30))
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
base = status_kb("VmRSS") / 1024
results = []
for name, kind, path in cases:
    before = reset_peak()
    start = time.perf_counter()
    try:
        loaders[kind](path)
        outcome, message = "value", ""
    except InputError as err:
        outcome, message = "InputError", str(err)
    except BaseException as err:  # what the test is here to catch
        outcome, message = type(err).__name__, str(err)[:300]
    seconds = time.perf_counter() - start
    results.append({
        "name": name, "outcome": outcome, "message": message,
        "seconds": seconds, "peak_mb": peak_since(before),
    })
print(json.dumps({"baseline_mb": base, "results": results}))
"""
)


def run_cases(cases: list[tuple[str, str, Path]], timeout: float = 300) -> dict[str, dict]:
    """Load each (name, kind, path) in one child process; results by case name."""
    payload = json.dumps([(n, k, str(p)) for n, k, p in cases])
    env = dict(os.environ, PYTHONPATH=str(CODE_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=payload,
        capture_output=True,
        text=True,
        cwd=CODE_ROOT,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {r["name"]: r for r in report["results"]}


def check_refused(results: dict[str, dict], needles: dict[str, str]) -> None:
    """Every case: an InputError of one line containing its needle, in bounded time/memory."""
    failures = []
    print(f"\n{'case':<28} {'outcome':<12} {'seconds':>8} {'peak MB':>8}")  # pytest -s shows it
    for name, needle in needles.items():
        r = results[name]
        print(f"{name!r:<28} {r['outcome']:<12} {r['seconds']:>8.3f} {r['peak_mb']:>8.1f}")
        ok = (
            r["outcome"] == "InputError"
            and "\n" not in r["message"]
            and needle in r["message"]
            and r["seconds"] < SECONDS_BOUND
            and r["peak_mb"] < PEAK_MB_BOUND
        )
        if not ok:
            failures.append(f"{name}: {r}")
    assert not failures, "\n".join(failures)


_CLI = (
    r"""
import atexit, json, resource, runpy, sys, time
out = sys.argv.pop(1)
import torch  # noqa: F401
import aslquant.cli  # noqa: F401  (what `python -m aslquant` imports first)
"""
    + _MEMORY_HELPERS
    + r"""
before = reset_peak()
start = time.perf_counter()

@atexit.register
def _report():
    with open(out, "w") as fh:
        json.dump({"peak_mb": peak_since(before), "seconds": time.perf_counter() - start}, fh)

sys.argv[0] = "aslquant"
runpy.run_module("aslquant", run_name="__main__", alter_sys=True)
"""
)


def run_cli(args: list[str], tmp: Path, timeout: float = 300) -> tuple[int, str, dict]:
    """``python -m aslquant report ARGS --out TMP/out`` (through runpy, which is what ``-m``
    does), returning (exit code, stderr, {peak_mb, seconds})."""
    measure = tmp / "cli_measure.json"
    env = dict(os.environ, PYTHONPATH=str(CODE_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _CLI, str(measure), "report", *args, "--out", str(tmp / "out")],
        capture_output=True,
        text=True,
        cwd=CODE_ROOT,
        env=env,
        timeout=timeout,
    )
    return proc.returncode, proc.stderr, json.loads(measure.read_text())


def check_cli_refusal(code: int, stderr: str, measured: dict, needle: str) -> None:
    """Exit 2, one ``error:`` line (the last), no traceback, bounded memory and time."""
    lines = stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    print(f"\nCLI exit {code}, {measured['seconds']:.3f} s, peak {measured['peak_mb']:.1f} MB")
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1 and lines[-1] == errors[0] and needle in errors[0], stderr
    assert "\x1b" not in stderr, stderr
    assert measured["peak_mb"] < PEAK_MB_BOUND and measured["seconds"] < SECONDS_BOUND, measured
