"""The one exception type for problems a person can fix (bad files, bad options).

Everything the engine raises for untrusted input is an ``InputError`` whose message is a
single line naming the file or option and what is wrong. The CLI prints it and exits 2; the
dashboard shows it with ``st.error``. Anything else is a bug and is allowed to surface as one.
"""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input from the user: a file, a folder or an option. ``str(err)`` is one line."""

    def __init__(self, message: str) -> None:
        # Collapse whitespace so a message never spans several lines on stderr or in st.error.
        super().__init__(" ".join(str(message).split()))


class UnsupportedCombination(InputError):
    """A recipe torch cannot run (e.g. an observer/qscheme the backend rejects)."""


def read_input_file(path: str | Path, what: str, label: str | None = None) -> bytes:
    """The bytes of a user's file, or an InputError saying it is missing or empty."""
    label = label or str(path)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{label}: {what} file not found")
    data = path.read_bytes()
    if not data:
        raise InputError(f"{label}: {what} file is empty")
    return data
