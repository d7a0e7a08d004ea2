"""`python -m aslquant`: the headless view of the engine.

The commands are an explicit list (``COMMANDS``): each module under ``aslquant.cli`` adds its
own parser and its own function. Exit codes: 0 success; 2 bad input (one line on stderr naming
the file and what is wrong); 3 when a gate (``--fail-if-drop`` and the other ship gates) fails.
Library warnings are collected and shown only with ``--verbose``, so an error is one line.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence

from aslquant.errors import InputError

EXIT_OK, EXIT_BAD_INPUT, EXIT_GATE = 0, 2, 3
#: Kept for callers that know the drop gate by its first name.
EXIT_DROP = EXIT_GATE


#: Whether progress goes to stderr when it is not a terminal (set by ``--verbose``): by default
#: a failing command prints exactly one line there, the error.
_VERBOSE = False


class ProgressBar:
    """A one-line progress bar on stderr when it is a terminal; a line per stage otherwise,
    only with ``--verbose`` (so an error is the only line a script or CI log sees)."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = self.stream.isatty()
        self.silent = not self.tty and not _VERBOSE
        self.stage: str | None = None
        self.start = time.perf_counter()

    def __call__(self, stage: str, fraction: float) -> None:
        if self.silent:
            return
        fraction = min(1.0, max(0.0, fraction))
        elapsed = time.perf_counter() - self.start
        if self.tty:
            filled = int(round(self.width * fraction))
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r{stage:<20} [{bar}] {100 * fraction:5.1f}% {elapsed:6.1f}s")
            if fraction >= 1.0:
                self.stream.write("\n")
        elif stage != self.stage:
            self.stream.write(f"{stage} ... ({elapsed:.1f}s)\n")
        self.stage = stage
        self.stream.flush()


class _Parser(argparse.ArgumentParser):
    """argparse that reports option errors as bad input (exit 2, one line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message}")


def _commands() -> list:
    """The command modules, in the order ``--help`` lists them."""
    from aslquant.cli import doctor, export, report, sweep, tools

    return [report, sweep, doctor, export, *tools.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m aslquant", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true",
                        help="also print library warnings (after the result or the error)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in _commands():
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from aslquant import runtime
    from aslquant.cli import tools

    argv = list(sys.argv[1:] if argv is None else argv)
    runtime.configure()
    # synth and train-demo parse their own options.
    delegated = tools.delegate(argv)
    if delegated is not None:
        return _guard(delegated, verbose=False)
    global _VERBOSE
    verbose = _VERBOSE = "--verbose" in argv
    parser = build_parser()

    def run() -> int:
        args = parser.parse_args(argv)
        return args.func(args)

    return _guard(run, verbose=verbose)


def _guard(run: Callable[[], int], verbose: bool) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = run()
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            code = EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            code = 130
    if verbose:
        for w in caught:
            print(f"warning: {w.category.__name__}: {w.message}", file=sys.stderr)
    return code
