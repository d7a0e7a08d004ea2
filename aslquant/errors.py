"""The one exception type for problems a person can fix (bad files, bad options).

Everything the engine raises for untrusted input is an ``InputError`` whose message is a
single line naming the file or option and what is wrong. The CLI prints it and exits 2; the
dashboard shows it with ``st.error``. Anything else is a bug and is allowed to surface as one.

Messages embed names that come from the user (file names, zip members, class names), and a
name can hold terminal control sequences (``ESC[2J`` clears the screen) or bytes that are not
valid UTF-8. ``InputError`` escapes them itself, once, at the point every message passes
through, so no call site can forget; ``printable`` is the same escaping for other places that
show a user's name (progress lines, skipped-file lists).

``read_input_file`` is how every loader reads a user's file: it opens without blocking, checks
on the open descriptor that it is a regular file below the loader's size cap, lets the loader
check the first bytes, and only then reads the rest.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path

#: Size cap of ``read_input_file`` when a loader does not name its own.
MAX_INPUT_FILE_BYTES = 64 * 1024 * 1024
#: Bytes handed to a loader's ``check_head`` before the rest of the file is read.
HEAD_BYTES = 64

#: Unicode categories escaped in messages: controls (C0, DEL, C1 incl. ESC and CSI), format
#: characters (bidirectional overrides that reorder what a terminal shows), surrogates (the
#: undecodable bytes of a non-UTF-8 file name) and private-use / unassigned code points.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: object) -> str:
    """``text`` on one line with control and invisible characters written as escapes.

    Runs of whitespace (newlines, tabs, U+2028 ...) become one space; every other character in
    a control, format, surrogate, private-use or unassigned category becomes ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``. Printable text, accents and emoji pass unchanged.
    """
    collapsed = " ".join(str(text).split())
    if collapsed.isprintable():
        return collapsed
    return "".join(
        _escape(c) if unicodedata.category(c) in _UNPRINTABLE_CATEGORIES else c for c in collapsed
    )


class InputError(ValueError):
    """Bad input from the user: a file, a folder or an option. ``str(err)`` is one line.

    The message is passed through ``printable``: one line, and no control sequence from a
    user's file name can reach the terminal or the page.
    """

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


class UnsupportedCombination(InputError):
    """A recipe torch cannot run (e.g. an observer/qscheme the backend rejects)."""


class UnreadableFile(Exception):
    """Why a path cannot be read as a user's file; ``reason`` reads after "<what> file "
    ("not found", "is a directory, not a file", "is empty", "is 3221225472 bytes; ...")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_regular_file(
    path: str | Path,
    max_bytes: int,
    check_head: Callable[[bytes], None] | None = None,
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ``UnreadableFile`` otherwise.

    The file is opened with ``O_NONBLOCK`` (opening a FIFO never waits for a writer) and
    checked with ``fstat`` on that descriptor, so what is checked is what is read. The size
    cap is applied before reading; ``check_head`` sees the first ``HEAD_BYTES`` bytes before
    the rest is read (it raises to refuse). Never more than the size ``fstat`` reported is
    read, so a file that grows meanwhile cannot push the read past the cap.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnreadableFile("not found") from None
    except IsADirectoryError:
        raise UnreadableFile("is a directory, not a file") from None
    except OSError as err:
        if err.errno == errno.ENXIO:  # a socket, or a FIFO on some systems
            raise UnreadableFile("is not a regular file (a socket or FIFO)") from None
        raise UnreadableFile(f"cannot be read ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UnreadableFile("is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile("is not a regular file (a FIFO, socket or device)")
        if info.st_size > max_bytes:
            raise UnreadableFile(f"is {info.st_size} bytes; the limit is {max_bytes} bytes")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            head = fh.read(HEAD_BYTES)
            if not head:
                raise UnreadableFile("is empty")
            if check_head is not None:
                check_head(head)
            # At most the size fstat reported (itself within the cap): a file that grows while
            # it is read is read as it was, never past the cap.
            rest = fh.read(max(0, info.st_size - len(head)))
    except OSError as err:
        raise UnreadableFile(f"cannot be read ({err.strerror or err})") from None
    finally:
        os.close(fd)
    return head + rest


def read_input_file(
    path: str | Path,
    what: str,
    label: str | None = None,
    *,
    max_bytes: int = MAX_INPUT_FILE_BYTES,
    check_head: Callable[[bytes], None] | None = None,
) -> bytes:
    """The bytes of a user's file, or an InputError naming it and what is wrong.

    Missing, a directory, a FIFO/socket/device, empty, larger than ``max_bytes``, or refused
    by ``check_head`` (which sees the first bytes before the rest is read) are all one line:
    ``"<label>: <what> file not found"``, ``"<label>: <what> file is a directory, not a
    file"``, ``"<label>: <what> file is 3221225472 bytes; the limit is ..."``.
    """
    label = label or str(path)
    try:
        return read_regular_file(path, max_bytes, check_head)
    except UnreadableFile as err:
        raise InputError(f"{label}: {what} file {err.reason}") from None
