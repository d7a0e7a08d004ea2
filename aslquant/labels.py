"""Class names from ``lb.pkl`` (joblib or pickle), ``labels.txt`` or a JSON list.

``lb.pkl`` is untrusted: it is read by a pure-Python unpickler whose ``find_class`` admits only
the handful of globals a dumped ``LabelBinarizer`` refers to, and each of those is replaced by a
small stand-in defined here. Nothing named in the file is imported or called, so neither
scikit-learn nor joblib needs to be installed, and a hostile pickle is refused before it can act.

joblib's format is a pickle stream in which each numeric/string array is a
``joblib.numpy_pickle.NumpyArrayWrapper`` whose raw bytes follow inline right after the BUILD
opcode of the wrapper (after one padding-length byte and that many padding bytes in joblib >= 1.2).
Object arrays are written instead as a nested, ordinary pickle stream at the same place.
"""

from __future__ import annotations

import bz2
import io
import json
import lzma
import math
import pickle
import re
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from aslquant.errors import InputError, read_input_file

#: Largest labels file read (a 29-class lb.pkl is about 1.2 kB; 10,000 names of 200
#: characters in joblib's UCS-4 array are 8 MB). Also the cap on a decompressed joblib file.
MAX_LABELS_BYTES = 16 * 1024 * 1024
#: Most classes a labels file may name, and longest class name.
MAX_CLASSES = 10_000
MAX_NAME_LEN = 200
#: Longest integer a labels file may hold (an integer class name is still a name). Checked
#: before Python converts it: str() of a 5,000-digit int raises, and costs quadratic time.
MAX_INT_DIGITS = MAX_NAME_LEN
#: Longest "index" in an "index name" labels.txt line (indexes run 0..MAX_CLASSES).
MAX_INDEX_DIGITS = len(str(MAX_CLASSES))
#: Most lines in a text labels file (names, blank lines and comments together), counted
#: before the text is split so a file of 16 million empty lines costs no list of them.
MAX_LABELS_LINES = 100_000
#: Deepest nesting in a JSON labels file: one flat list of names. Checked on the text before
#: json parses it (json recurses per level; 100,000 levels raise RecursionError).
MAX_JSON_DEPTH = 1
#: Most pickle opcodes executed for one labels file. A fitted LabelBinarizer of 10,000
#: classes needs about 40,000; the unpickler is pure Python, so this bounds time (~0.1 s)
#: and the objects it can create, whatever the file size.
MAX_LABELS_PICKLE_OPCODES = 100_000

_PICKLE_EXTS = {".pkl", ".pickle", ".joblib", ".pck", ".z", ".gz", ".bz2", ".xz", ".lzma"}


# ---------------------------------------------------------------------------------------------
# Stand-ins for the globals a LabelBinarizer pickle names. None of them runs code from the file.


class _EstimatorStub:
    """Holds the attribute dict of a pickled LabelBinarizer / LabelEncoder."""

    kind = "estimator"


class _WrapperStub:
    """Stands in for joblib's NumpyArrayWrapper; BUILD gives it the array's metadata."""


class _NDArrayMarker:
    """What ``numpy.ndarray`` resolves to: only ever compared against, never called."""


_NDARRAY = _NDArrayMarker()


class _DTypeStub:
    """``numpy.dtype(spec, align, copy)`` followed by BUILD(state); resolved to a real dtype."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.byteorder = "="

    def resolve(self) -> np.dtype:
        spec = self.spec
        if spec.startswith("O"):
            return np.dtype(object)
        order = self.byteorder if self.byteorder in "<>|=" else "="
        return np.dtype(order + spec)


class _ArrayStub:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``; BUILD fills it in."""

    array: np.ndarray | None = None


_DTYPE_SPEC = re.compile(r"^(?:[USiufb]\d{1,5}|O\d?)$")
_MAX_ELEMENTS = 1_000_000


def _stub_dtype(spec: Any, align: Any = False, copy: Any = True) -> _DTypeStub:
    if not isinstance(spec, str) or not _DTYPE_SPEC.match(spec):
        raise pickle.UnpicklingError(f"unsupported array dtype {spec!r}")
    return _DTypeStub(spec)


def _stub_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> _ArrayStub:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("array of an unexpected subclass")
    return _ArrayStub()


def _check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise pickle.UnpicklingError(f"bad array shape {shape!r}")
    if math.prod(shape) > _MAX_ELEMENTS:
        raise pickle.UnpicklingError(f"array of shape {shape} is too large for a labels file")
    return shape


def _as_dtype(obj: Any) -> np.dtype:
    if not isinstance(obj, _DTypeStub):
        raise pickle.UnpicklingError("array without a valid dtype")
    return obj.resolve()


def _array_from_bytes(data: Any, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    if dtype.hasobject:
        raise pickle.UnpicklingError("object array given as raw bytes")
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("array data is not bytes")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise pickle.UnpicklingError("array data has the wrong length")
    flat = np.frombuffer(bytes(data), dtype=dtype)
    if order == "F":
        return flat.reshape(shape[::-1]).T
    return flat.reshape(shape)


def _stub_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _array_from_bytes(buf, _as_dtype(dtype), _check_shape(shape), str(order))


def _stub_scalar(dtype: Any, data: Any = None) -> Any:
    dt = _as_dtype(dtype)
    if dt.hasobject:
        raise pickle.UnpicklingError("object scalar")
    return _array_from_bytes(data, dt, (1,), "C")[0].item()


def _stub_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol 2 writes bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected use of _codecs.encode")
    return text.encode("latin1")


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_SKLEARN_LABEL = ("sklearn.preprocessing._label", "sklearn.preprocessing.label")

_ALLOWED: dict[tuple[str, str], Any] = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _WrapperStub,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _stub_dtype,
    ("_codecs", "encode"): _stub_encode,
}
for _mod in _SKLEARN_LABEL:
    _ALLOWED[(_mod, "LabelBinarizer")] = _EstimatorStub
    _ALLOWED[(_mod, "LabelEncoder")] = _EstimatorStub
for _mod in _NUMPY_CORE:
    _ALLOWED[(_mod, "_reconstruct")] = _stub_reconstruct
    _ALLOWED[(_mod, "scalar")] = _stub_scalar
for _mod in _NUMPY_NUMERIC:
    _ALLOWED[(_mod, "_frombuffer")] = _stub_frombuffer

_CALLABLE_STUBS = {_stub_dtype, _stub_reconstruct, _stub_frombuffer, _stub_scalar, _stub_encode}
_CLASS_STUBS = {_EstimatorStub, _WrapperStub}


class _Refused(Exception):
    """A global outside the allow-list; carries ``module.name`` for the message."""


class _SafeUnpickler(pickle._Unpickler):  # the pure-Python one: its opcodes can be overridden
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, fileobj: io.BytesIO, depth: int = 0) -> None:
        super().__init__(fileobj)
        self._fileobj = fileobj
        self._depth = depth
        self.opcodes = 0

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")

    # --- opcodes that call or instantiate: only our stand-ins may be called -----------------
    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if func not in _CALLABLE_STUBS or not isinstance(args, tuple):
            raise pickle.UnpicklingError("REDUCE on something that is not allowed")
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls not in _CLASS_STUBS or args != ():
            raise pickle.UnpicklingError("NEWOBJ on something that is not allowed")
        self.append(cls())

    def load_refused(self) -> None:
        raise pickle.UnpicklingError("opcode not allowed in a labels file")

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _EstimatorStub):
            if not isinstance(state, dict):
                raise pickle.UnpicklingError("estimator state is not a dict")
            inst.__dict__.update({str(k): v for k, v in state.items()})
        elif isinstance(inst, _DTypeStub):
            if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], str):
                inst.byteorder = state[1]
        elif isinstance(inst, _ArrayStub):
            if not isinstance(state, tuple) or len(state) != 5:
                raise pickle.UnpicklingError("bad ndarray state")
            _, shape, dtype, fortran, data = state
            shape = _check_shape(shape)
            dt = _as_dtype(dtype)
            if dt.hasobject:
                if not isinstance(data, list) or len(data) != math.prod(shape):
                    raise pickle.UnpicklingError("bad object array data")
                arr = np.empty(len(data), dtype=object)
                arr[:] = data
                self.stack[-1] = arr.reshape(shape)
            else:
                self.stack[-1] = _array_from_bytes(data, dt, shape, "F" if fortran else "C")
        elif isinstance(inst, _WrapperStub):
            if not isinstance(state, dict):
                raise pickle.UnpicklingError("bad NumpyArrayWrapper state")
            self.stack[-1] = self._read_joblib_array(state)
        else:
            raise pickle.UnpicklingError("BUILD on something that is not allowed")

    def _read_joblib_array(self, state: dict) -> np.ndarray:
        if state.get("subclass") is not _NDARRAY:
            raise pickle.UnpicklingError("joblib array of an unexpected subclass")
        shape = _check_shape(state.get("shape"))
        dtype = _as_dtype(state.get("dtype"))
        order = state.get("order", "C")
        frame = self._unframer.current_frame
        if frame is not None and frame.tell() != len(frame.getbuffer()):
            raise pickle.UnpicklingError("joblib array data inside a pickle frame")
        if dtype.hasobject:
            # joblib writes object arrays as a nested pickle stream; it goes through the same
            # allow-list (as joblib itself routes it through the outer find_class).
            if self._depth >= 2:
                raise pickle.UnpicklingError("nested arrays too deep")
            nested = _SafeUnpickler(self._fileobj, self._depth + 1)
            nested.opcodes = self.opcodes  # one budget for the whole file
            arr = nested.load()
            self.opcodes = nested.opcodes
            if not isinstance(arr, np.ndarray):
                raise pickle.UnpicklingError("joblib object array is not an array")
            return arr
        if state.get("numpy_array_alignment_bytes") is not None:
            pad = self.read(1)
            if len(pad) != 1:
                raise pickle.UnpicklingError("truncated joblib array")
            self.read(pad[0])
        nbytes = math.prod(shape) * dtype.itemsize
        data = self.read(nbytes)
        if len(data) != nbytes:
            raise pickle.UnpicklingError("truncated joblib array data")
        return _array_from_bytes(data, dtype, shape, order)


_SafeUnpickler.dispatch[pickle.REDUCE[0]] = _SafeUnpickler.load_reduce
_SafeUnpickler.dispatch[pickle.NEWOBJ[0]] = _SafeUnpickler.load_newobj
_SafeUnpickler.dispatch[pickle.BUILD[0]] = _SafeUnpickler.load_build
_REFUSED_OPS = (pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST, pickle.PERSID, pickle.BINPERSID)
# EXT opcodes read copyreg's process-wide extension cache, which bypasses find_class.
for _op in (*_REFUSED_OPS, pickle.EXT1, pickle.EXT2, pickle.EXT4):
    _SafeUnpickler.dispatch[_op[0]] = _SafeUnpickler.load_refused


def _counted(handler: Any) -> Any:
    """Wrap an opcode handler so each call spends one unit of the file's opcode budget."""

    def run(self: _SafeUnpickler) -> None:
        self.opcodes += 1
        if self.opcodes > MAX_LABELS_PICKLE_OPCODES:
            raise pickle.UnpicklingError(
                f"more than {MAX_LABELS_PICKLE_OPCODES} pickle operations (a label binarizer "
                "needs a few hundred)"
            )
        handler(self)

    return run


_SafeUnpickler.dispatch = {op: _counted(h) for op, h in _SafeUnpickler.dispatch.items()}


# ---------------------------------------------------------------------------------------------


def _label_of(source: str | Path | bytes, name: str | None) -> str:
    if name:
        return name
    return "labels" if isinstance(source, (bytes, bytearray)) else str(source)


def _bounded_decompress(data: bytes) -> bytes | None:
    """Decompress joblib's zlib/gzip/bz2/xz/lzma wrappers, capped; None if not compressed."""
    cap = MAX_LABELS_BYTES + 1
    try:
        if data[:1] == b"\x78":
            out = zlib.decompressobj().decompress(data, cap)
        elif data[:2] == b"\x1f\x8b":
            out = zlib.decompressobj(wbits=31).decompress(data, cap)
        elif data[:3] == b"BZh":
            out = bz2.BZ2Decompressor().decompress(data, cap)
        elif data[:5] == b"\xfd7zXZ" or data[:2] == b"\x5d\x00":
            out = lzma.LZMADecompressor().decompress(data, cap)
        else:
            return None
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        return None
    if len(out) > MAX_LABELS_BYTES:
        raise InputError("compressed labels file expands beyond the size limit")
    return out if out[:1] == b"\x80" else None


def _classes_of(obj: Any, label: str) -> list[Any]:
    """The class names inside what the unpickler returned (LabelBinarizer, array or list)."""
    if isinstance(obj, _EstimatorStub):
        classes = obj.__dict__.get("classes_")
        if classes is None:
            raise InputError(f"{label}: the pickled label binarizer has no classes_ (not fitted?)")
    else:
        classes = obj
    if isinstance(classes, np.ndarray):
        if classes.ndim != 1:
            raise InputError(f"{label}: classes_ has shape {classes.shape}; expected a 1-D array")
        _check_count(len(classes), label)
        return classes.tolist()
    if isinstance(classes, (list, tuple)):
        _check_count(len(classes), label)
        return list(classes)
    raise InputError(f"{label}: the pickle holds no label names (got {type(obj).__name__})")


def _names_from_pickle(data: bytes, label: str) -> list[str]:
    """Names from a pickle; every way the bytes can be malformed is one ``InputError``."""
    try:
        obj = _SafeUnpickler(io.BytesIO(data)).load()
        # Converting what the file holds can fail too: a corrupted UCS-4 array holds a code
        # point above U+10FFFF (numpy raises SystemError or ValueError in tolist()), an int
        # can be too long to print. All of it is decoding untrusted bytes.
        return _clean(_classes_of(obj, label), label)
    except InputError:
        raise
    except _Refused as err:
        raise InputError(f"{label}: labels file refers to {err}; refusing to load") from None
    except RecursionError:
        raise InputError(f"{label}: not a valid labels pickle (nested too deeply)") from None
    except Exception as err:  # noqa: BLE001  every malformed-pickle error means the same to a user
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise InputError(f"{label}: not a valid labels pickle ({detail})") from None


#: Every character ``str.splitlines`` breaks a line at.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _names_from_text(text: str, label: str) -> list[Any]:
    breaks = sum(text.count(c) for c in _LINE_BREAKS)  # C-speed upper bound on the lines
    if breaks >= MAX_LABELS_LINES:
        raise InputError(
            f"{label}: more than {MAX_LABELS_LINES} lines; a labels file has one line a class "
            f"(at most {MAX_CLASSES})"
        )
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    indexed = [re.match(r"^(\d+)\s*[\s,:;=]\s*(.+)$", ln) for ln in lines]
    if lines and all(indexed):
        for m in indexed:
            if m and len(m.group(1)) > MAX_INDEX_DIGITS:
                raise InputError(
                    f"{label}: class index {m.group(1)[:12]}... has {len(m.group(1))} digits; "
                    f"indexes run 0..{MAX_CLASSES} ({MAX_INDEX_DIGITS} digits at most)"
                )
        pairs = [(int(m.group(1)), m.group(2).strip()) for m in indexed if m]
        idx = sorted(i for i, _ in pairs)
        base = idx[0]
        if base not in (0, 1) or idx != list(range(base, base + len(idx))):
            raise InputError(
                f"{label}: 'index name' lines must number the classes 0..n-1 (or 1..n) once each"
            )
        return [n for _, n in sorted(pairs)]
    return lines


def _check_count(count: int, label: str) -> None:
    if count > MAX_CLASSES:
        raise InputError(f"{label}: {count} classes; at most {MAX_CLASSES} are supported")


def _int_digits_ok(value: int) -> bool:
    """True if ``value`` has at most MAX_INT_DIGITS decimal digits (checked without str())."""
    return abs(value) < 10**MAX_INT_DIGITS


#: A JSON string literal (escapes included); removed before brackets and commas are counted.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _json_int(digits: str) -> int:
    """json's ``parse_int`` hook: refuse an over-long integer before converting it."""
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits; at most {MAX_INT_DIGITS}")
    return int(digits)


def _names_from_json(text: str, label: str) -> list[Any]:
    """A flat JSON list, checked on the text (depth, count) before json parses it."""
    skeleton = _JSON_STRING.sub('""', text)
    opened = skeleton.count("[") + skeleton.count("{")
    if opened > MAX_JSON_DEPTH or skeleton.count("{"):
        raise InputError(
            f"{label}: JSON labels must be a list of names, one level deep (a nested list or "
            "object is not a name)"
        )
    if skeleton.count(",") >= MAX_CLASSES:
        raise InputError(
            f"{label}: more than {MAX_CLASSES} entries; that many classes are not supported"
        )
    del skeleton
    try:
        obj = json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as err:
        raise InputError(f"{label}: invalid JSON ({err.msg} at line {err.lineno})") from None
    except (ValueError, RecursionError) as err:
        raise InputError(f"{label}: unusable JSON ({str(err)[:120]})") from None
    if not isinstance(obj, list):
        raise InputError(f"{label}: JSON labels must be a list of names")
    return obj


def _clean(names: Iterable[Any], label: str) -> list[str]:
    names = list(names)
    _check_count(len(names), label)
    out: list[str] = []
    for i, raw in enumerate(names):
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        if isinstance(raw, int) and not isinstance(raw, bool) and not _int_digits_ok(raw):
            raise InputError(
                f"{label}: class {i} is an integer of more than {MAX_INT_DIGITS} digits"
            )
        if isinstance(raw, bool) or raw is None:
            name = str(raw)
        elif isinstance(raw, (str, int, float, np.generic)):
            name = str(raw).strip()
        else:
            raise InputError(f"{label}: class {i} is a {type(raw).__name__}, not a name")
        if not name:
            raise InputError(f"{label}: class {i} has an empty name")
        if len(name) > MAX_NAME_LEN or any(ord(c) < 32 for c in name):
            raise InputError(f"{label}: class {i} has an unusable name {name[:40]!r}")
        out.append(name)
    seen: dict[str, int] = {}
    for i, name in enumerate(out):
        if name in seen:
            raise InputError(f"{label}: duplicate label {name!r} (classes {seen[name]} and {i})")
        seen[name] = i
    if len(out) < 2:
        raise InputError(f"{label}: found {len(out)} class(es); need at least 2")
    return out


def load_labels(source: str | Path | bytes, name: str | None = None) -> list[str]:
    """Class names, in model output order, from lb.pkl / labels.txt / a JSON list.

    The format is detected from the content (pickle magic, compressed joblib, JSON ``[``,
    else text). Raises ``InputError`` naming the file for anything unusable.
    """
    label = _label_of(source, name)
    ext = ""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        ext = Path(name).suffix.lower() if name else ""
    else:
        path = Path(source)
        ext = path.suffix.lower()
        data = read_input_file(path, "labels", label, max_bytes=MAX_LABELS_BYTES)
    if len(data) > MAX_LABELS_BYTES:
        raise InputError(
            f"{label}: labels file is {len(data)} bytes; the limit is {MAX_LABELS_BYTES} bytes"
        )
    if not data.strip():
        raise InputError(f"{label}: labels file is empty")

    if data[:1] == b"\x80":
        return _names_from_pickle(data, label)
    try:
        inflated = _bounded_decompress(data)
    except InputError as err:
        raise InputError(f"{label}: {err}") from None
    if inflated is not None:
        return _names_from_pickle(inflated, label)
    if data[:2] == b"ZF":
        raise InputError(f"{label}: joblib file from before joblib 0.9.3; re-save it")
    if ext in _PICKLE_EXTS:
        raise InputError(
            f"{label}: unknown format: not a joblib or pickle (protocol 2+) file such as joblib.dump writes"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(
            f"{label}: unknown format: not a pickle, JSON list or UTF-8 text file"
        ) from None
    if "\x00" in text:
        raise InputError(f"{label}: unknown format: binary data in a text labels file")
    stripped = text.lstrip()
    if stripped.startswith("[") or ext == ".json":
        return _clean(_names_from_json(text, label), label)
    return _clean(_names_from_text(text, label), label)


def write_labels_txt(names: Iterable[str], path: str | Path) -> Path:
    """Write one class name per line (UTF-8); validates the names like ``load_labels``."""
    path = Path(path)
    clean = _clean(list(names), str(path))
    path.write_text("".join(n + "\n" for n in clean), encoding="utf-8")
    return path
