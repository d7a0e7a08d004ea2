"""The one exception type for problems a person can fix (bad files, bad options).

Everything the engine raises for untrusted input is an ``InputError`` whose message is a
single line naming the file or option and what is wrong. The CLI prints it and exits 2; the
dashboard shows it with ``st.error``. Anything else is a bug and is allowed to surface as one.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: a file, a folder or an option. ``str(err)`` is one line."""

    def __init__(self, message: str) -> None:
        # Collapse whitespace so a message never spans several lines on stderr or in st.error.
        super().__init__(" ".join(str(message).split()))


class UnsupportedCombination(InputError):
    """A recipe torch cannot run (e.g. an observer/qscheme the backend rejects)."""
