"""Property: damaged demo files give a value or one InputError, never any other exception.

Hypothesis flips bytes in and truncates sample_data/lb.pkl, labels.txt and model.pth. For the
checkpoint the flips favour its structure (the zip headers and data.pkl at the front, the
central directory and end records at the back) over tensor bytes, where almost any change is
just another float. Derandomized and without a database: the same examples on every run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.model import load_checkpoint

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
LB_PKL = (SAMPLE / "lb.pkl").read_bytes()
LABELS_TXT = (SAMPLE / "labels.txt").read_bytes()
MODEL = (SAMPLE / "model.pth").read_bytes()

FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _positions(size: int, edge: int) -> st.SearchStrategy[int]:
    """Anywhere, but mostly within ``edge`` bytes of either end."""
    return st.one_of(
        st.integers(0, min(edge, size) - 1),
        st.integers(max(0, size - edge), size - 1),
        st.integers(0, size - 1),
    )


#: Byte values fuzzers try first: zero, the top of ASCII, 0x80 (a UTF-8 continuation byte,
#: and the pickle PROTO opcode), 0xFF, and 0x11 (in the third byte of a UCS-4 character it
#: makes a code point above U+10FFFF).
_INTERESTING = (0x00, 0x11, 0x7F, 0x80, 0xFF)


def _damaged(original: bytes, edge: int) -> st.SearchStrategy[bytes]:
    """``original`` with up to three bytes changed, or cut short, or both."""
    value = st.one_of(st.sampled_from(_INTERESTING), st.integers(0, 255))
    flips = st.lists(st.tuples(_positions(len(original), edge), value), min_size=1, max_size=3)
    cut = _positions(len(original), edge)

    def apply(changes: list[tuple[int, int]], end: int | None) -> bytes:
        data = bytearray(original)
        for at, byte in changes:
            data[at] = byte
        return bytes(data[:end] if end is not None else data)

    return st.one_of(
        flips.map(lambda c: apply(c, None)),
        cut.map(lambda end: apply([], end)),
        st.tuples(flips, cut).map(lambda args: apply(*args)),
    )


def _value_or_input_error(load, data: bytes, name: str) -> None:
    try:
        load(data, name)
    except InputError as err:
        message = str(err)
        assert "\n" not in message and message.startswith(f"{name}: "), message


@pytest.mark.slow
@FUZZ
@given(_damaged(LB_PKL, edge=len(LB_PKL)))
def test_damaged_lb_pkl(data: bytes) -> None:
    _value_or_input_error(lambda d, n: load_labels(d, name=n), data, "lb.pkl")


@FUZZ
@given(_damaged(LABELS_TXT, edge=len(LABELS_TXT)))
def test_damaged_labels_txt(data: bytes) -> None:
    _value_or_input_error(lambda d, n: load_labels(d, name=n), data, "labels.txt")


@pytest.mark.slow
@settings(FUZZ, max_examples=150)
@given(_damaged(MODEL, edge=2048))
def test_damaged_model_pth(data: bytes) -> None:
    _value_or_input_error(lambda d, n: load_checkpoint(d, num_labels=29, name=n), data, "model.pth")
