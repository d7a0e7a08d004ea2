"""InputError escaping and read_input_file's checks before reading."""

from __future__ import annotations

import os

import pytest

from aslquant.errors import InputError, printable, read_input_file


def test_control_sequences_in_messages_are_escaped():
    err = InputError("evil\x1b[2J\x1b]0;title\x07.pth: not a checkpoint")
    assert str(err) == "evil\\x1b[2J\\x1b]0;title\\x07.pth: not a checkpoint"
    # C1 controls (CSI U+009B), bidi overrides and undecodable bytes of a file name.
    undecodable = os.fsdecode(b"caf\xe9.pth")
    assert printable(f"\x9b2J \u202egnp.exe {undecodable}") == "\\x9b2J \\u202egnp.exe caf\\xe9.pth"


def test_whitespace_collapses_and_ordinary_text_passes():
    assert str(InputError("a\nb\r\n\tc\u2028d")) == "a b c d"
    assert printable("Ünïcødé ✋ names, 'quoted'") == "Ünïcødé ✋ names, 'quoted'"


def test_read_input_file_names_what_the_path_is(tmp_path):
    with pytest.raises(InputError, match="x.bin: data file not found"):
        read_input_file(tmp_path / "x.bin", "data")
    with pytest.raises(InputError, match="data file is a directory, not a file"):
        read_input_file(tmp_path, "data")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="pipe: data file is not a regular file"):
        read_input_file(fifo, "data")  # returns at once: no writer is waited for
    with pytest.raises(InputError, match="/dev/null: data file is not a regular file"):
        read_input_file("/dev/null", "data")


def test_size_cap_and_head_check_come_before_reading(tmp_path):
    sparse = tmp_path / "huge.bin"
    with open(sparse, "wb") as fh:
        fh.truncate(3 << 30)
    with pytest.raises(
        InputError, match="huge.bin: data file is 3221225472 bytes; the limit is 10"
    ):
        read_input_file(sparse, "data", max_bytes=10)
    seen = []

    def check_head(head: bytes) -> None:
        seen.append(head)
        raise InputError("refused on its first bytes")

    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    with pytest.raises(InputError, match="refused on its first bytes"):
        read_input_file(tmp_path / "f.bin", "data", check_head=check_head)
    assert seen == [b"x" * 64]
    assert read_input_file(tmp_path / "f.bin", "data", max_bytes=1000) == b"x" * 1000
    with pytest.raises(InputError, match="data file is empty"):
        (tmp_path / "e.bin").write_bytes(b"")
        read_input_file(tmp_path / "e.bin", "data")
