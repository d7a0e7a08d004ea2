"""Label files: real joblib/sklearn output, hostile pickles, text and JSON formats."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.preprocessing import LabelBinarizer, LabelEncoder

from aslquant.errors import InputError
from aslquant.labels import load_labels, write_labels_txt

ASL_CLASSES = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + ("del", "nothing", "space")
REPO = Path(__file__).resolve().parents[1]
ASL_SORTED = sorted(ASL_CLASSES)  # LabelBinarizer stores np.unique order


def _dump(tmp_path: Path, obj: object, name: str = "lb.pkl", **kw) -> Path:
    path = tmp_path / name
    joblib.dump(obj, path, **kw)
    return path


def test_real_joblib_label_binarizer(tmp_path: Path) -> None:
    path = _dump(tmp_path, LabelBinarizer().fit(list(ASL_CLASSES)))
    assert load_labels(path) == ASL_SORTED
    assert load_labels(path.read_bytes(), name="upload.pkl") == ASL_SORTED


def test_loads_without_sklearn_or_joblib(tmp_path: Path) -> None:
    path = _dump(tmp_path, LabelBinarizer().fit(list(ASL_CLASSES)))
    code = (
        "import sys, json\n"
        "sys.modules['sklearn'] = None\n"
        "sys.modules['joblib'] = None\n"
        "from aslquant.labels import load_labels\n"
        f"names = load_labels({str(path)!r})\n"
        "assert 'sklearn.preprocessing' not in sys.modules\n"
        "print(json.dumps(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ASL_SORTED


@pytest.mark.parametrize("compress", [3, ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)])
def test_compressed_joblib(tmp_path: Path, compress) -> None:
    path = _dump(tmp_path, LabelBinarizer().fit(["x", "y", "z"]), compress=compress)
    assert path.read_bytes()[:1] != b"\x80"  # really compressed
    assert load_labels(path) == ["x", "y", "z"]


def test_joblib_object_dtype_classes(tmp_path: Path) -> None:
    lb = LabelBinarizer().fit(["hello", "B", "space"])
    lb.classes_ = np.array(["B", "hello", "space"], dtype=object)
    path = _dump(tmp_path, lb)
    assert b"_reconstruct" in path.read_bytes()  # the nested pickle joblib writes for objects
    assert load_labels(path) == ["B", "hello", "space"]


def test_joblib_numpy_str_scalars_and_ints(tmp_path: Path) -> None:
    lb = LabelBinarizer().fit(["a", "b"])
    lb.classes_ = np.array([np.str_("a"), np.str_("b")], dtype=object)
    assert load_labels(_dump(tmp_path, lb)) == ["a", "b"]
    assert load_labels(_dump(tmp_path, LabelBinarizer().fit([3, 1, 2]), "i.pkl")) == ["1", "2", "3"]
    assert load_labels(_dump(tmp_path, LabelEncoder().fit(["q", "p"]), "e.pkl")) == ["p", "q"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_pickle(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "lb.pkl"
    path.write_bytes(pickle.dumps(LabelBinarizer().fit(list(ASL_CLASSES)), protocol=protocol))
    assert load_labels(path) == ASL_SORTED


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_reduce_to_posix_system_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(f"touch {marker}"))
    # The payload is real: an ordinary unpickler runs it.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    lb = LabelBinarizer().fit(["a", "b"])
    lb.classes_ = _Evil(f"touch {marker}")
    for blob in (payload, pickle.dumps(lb)):
        with pytest.raises(InputError, match=r"lb\.pkl: labels file refers to posix\.system; "):
            load_labels(blob, name="lb.pkl")
    assert not marker.exists()


def test_hostile_inside_joblib_object_array(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    lb = LabelBinarizer().fit(["a", "b"])
    lb.classes_ = np.array(["a", _Evil(f"touch {marker}")], dtype=object)
    path = _dump(tmp_path, lb)
    with pytest.raises(InputError, match="refers to posix.system; refusing to load"):
        load_labels(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("subprocess", "Popen"), ("builtins", "eval"), ("builtins", "getattr")],
)
def test_disallowed_globals(module: str, name: str) -> None:
    # PROTO 4, STACK_GLOBAL(module, name), a one-string tuple, REDUCE, STOP
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    blob = b"\x80\x04" + s(module) + s(name) + b"\x93" + s("id") + b"\x85R."
    with pytest.raises(InputError) as err:
        load_labels(blob, name="evil.pkl")
    assert str(err.value) == f"evil.pkl: labels file refers to {module}.{name}; refusing to load"


def test_text_formats(tmp_path: Path) -> None:
    plain = tmp_path / "labels.txt"
    plain.write_text("# ASL\nA\n\nB\r\nnothing\n", encoding="utf-8")
    assert load_labels(plain) == ["A", "B", "nothing"]
    indexed = tmp_path / "idx.txt"
    indexed.write_text("2 space\n0 A\n1 del\n")
    assert load_labels(indexed) == ["A", "del", "space"]
    one_based = tmp_path / "one.txt"
    one_based.write_text("1: cat\n2: dog\n")
    assert load_labels(one_based) == ["cat", "dog"]
    assert load_labels("\ufeffx\ny\n".encode(), name="bom.txt") == ["x", "y"]
    # Starts with "x" (zlib's magic byte) and "BZh" (bz2's) yet is plain text.
    assert load_labels(b"xylophone\nyak\n", name="labels.txt") == ["xylophone", "yak"]
    assert load_labels(b"BZh9\nother\n", name="labels.txt") == ["BZh9", "other"]


def test_json_list(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(["A", "B", "del"]))
    assert load_labels(path) == ["A", "B", "del"]
    assert load_labels(b' ["x", "y"]', name="upload") == ["x", "y"]


def test_write_labels_txt_round_trip(tmp_path: Path) -> None:
    out = write_labels_txt(ASL_CLASSES, tmp_path / "labels.txt")
    assert out.read_text().splitlines() == list(ASL_CLASSES)
    assert load_labels(out) == list(ASL_CLASSES)
    with pytest.raises(InputError, match="duplicate"):
        write_labels_txt(["a", "a"], tmp_path / "bad.txt")


@pytest.mark.parametrize(
    ("content", "fname", "needle"),
    [
        (b"", "lb.pkl", "empty"),
        (b"  \n\n", "labels.txt", "empty"),
        (b"\x00\x01garbage", "lb.pkl", "unknown format"),
        (b"\xff\xfe\x00bin", "labels.txt", "unknown format"),
        (b"A\nB\nA\n", "labels.txt", "duplicate label 'A'"),
        (b'["A", "", "B"]', "labels.json", "empty name"),
        (b"only\n", "labels.txt", "need at least 2"),
        (b'{"0": "A"}', "labels.json", "must be a list"),
        (b'["A", "B"', "labels.json", "invalid JSON"),
        (b"0 A\n2 B\n", "labels.txt", "0..n-1"),
        (b'[["A"], "B"]', "labels.json", "not a name"),
    ],
)
def test_errors(tmp_path: Path, content: bytes, fname: str, needle: str) -> None:
    path = tmp_path / fname
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_labels(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_truncated_and_single_class_pickles(tmp_path: Path) -> None:
    data = _dump(tmp_path, LabelBinarizer().fit(list(ASL_CLASSES))).read_bytes()
    with pytest.raises(InputError, match="not a valid labels pickle"):
        load_labels(data[: len(data) - 100], name="cut.pkl")
    lb = LabelBinarizer().fit(["a", "b"])
    lb.classes_ = np.array(["a"])
    with pytest.raises(InputError, match="need at least 2"):
        load_labels(_dump(tmp_path, lb, "one.pkl"))
    with pytest.raises(InputError, match="not found"):
        load_labels(tmp_path / "missing.pkl")
