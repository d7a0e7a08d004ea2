"""Hostile labels files (issue 14): one-line refusals in bounded memory and time.

Huge integers (JSON, labels.txt index, pickled), deep nesting (JSON and pickle), line and
opcode floods, and one-byte corruptions of the demo lb.pkl that decode to a code point above
U+10FFFF (numpy raised SystemError from tolist()). Loaded in one measured child process.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from aslquant.errors import InputError
from aslquant.labels import (
    MAX_CLASSES,
    MAX_INT_DIGITS,
    MAX_LABELS_LINES,
    MAX_LABELS_PICKLE_OPCODES,
    load_labels,
)
from tests.hostile import check_cli_refusal, check_refused, run_cases, run_cli

REPO = Path(__file__).resolve().parents[1]
DEMO_LB = (REPO / "sample_data" / "lb.pkl").read_bytes()


def _corrupt_code_point() -> bytes:
    """The demo lb.pkl with the last byte of a UCS-4 class name set to 0x11: U+11xxxxxx."""
    data = bytearray(DEMO_LB)
    at = data.index("nothing".encode("utf-32-le")) + 3  # high byte of the first code point
    data[at] = 0x11
    return bytes(data)


HOSTILE = {
    "json-int-5000-digits.json": (b"[" + b"9" * 5000 + b', "B"]', f"at most {MAX_INT_DIGITS}"),
    "json-deep-100k.json": (b"[" * 100_000 + b"]" * 100_000, "one level deep"),
    "json-many.json": (b"[" + b"0," * 2_000_000 + b"0]", f"more than {MAX_CLASSES} entries"),
    "index-5000-digits.txt": (b"9" * 5000 + b" A\n1 B\n", "has 5000 digits"),
    "lines-4M.txt": (b"ab\r" * 4_000_000, f"more than {MAX_LABELS_LINES} lines"),
    "pickled-huge-int.pkl": (
        pickle.dumps([10**6000, 1], protocol=2),
        f"class 0 is an integer of more than {MAX_INT_DIGITS} digits",
    ),
    "pickle-deep-100k.pkl": (b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".", "operations"),
    "pickle-opcode-flood.pkl": (
        b"\x80\x02(" + b"N" * 12_000_000 + b"l.",
        f"more than {MAX_LABELS_PICKLE_OPCODES} pickle operations",
    ),
    "lb-code-point.pkl": (_corrupt_code_point(), "lb-code-point.pkl: not a valid labels pickle"),
}


@pytest.mark.slow
def test_hostile_labels_refused_in_bounded_memory_and_time(tmp_path):
    cases = []
    for name, (content, _) in HOSTILE.items():
        (tmp_path / name).write_bytes(content)
        cases.append((name, "labels", tmp_path / name))
    results = run_cases(cases)
    check_refused(results, {name: needle for name, (_, needle) in HOSTILE.items()})


@pytest.mark.slow
def test_cli_refuses_a_deep_json_labels_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    code, stderr, measured = run_cli(["--labels", str(path)], tmp_path)
    check_cli_refusal(code, stderr, measured, "labels.json: JSON labels must be a list")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_labels_file_is_one_input_error(name):
    content, needle = HOSTILE[name]
    with pytest.raises(InputError) as err:
        load_labels(content, name=name)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_single_byte_change_of_the_demo_lb_pkl_is_a_value_or_input_error():
    # Exhaustive where it is cheap: every position, three replacement bytes (1.2 kB file).
    for at in range(len(DEMO_LB)):
        for value in (0x00, 0x11, 0xFF):
            data = bytearray(DEMO_LB)
            data[at] = value
            try:
                load_labels(bytes(data), name="lb.pkl")
            except InputError as err:
                assert str(err).startswith("lb.pkl: ") and "\n" not in str(err)


def test_bounds_leave_real_files_alone(tmp_path):
    names = [f"class {i}" for i in range(MAX_CLASSES)]
    (tmp_path / "labels.txt").write_text("\n".join(f"{i} {n}" for i, n in enumerate(names)))
    assert load_labels(tmp_path / "labels.txt") == names
    assert load_labels(b"[1, 22, 333]", name="l.json") == ["1", "22", "333"]
    assert load_labels(b'["a,b", "[c]", "{d}"]', name="l.json") == ["a,b", "[c]", "{d}"]
