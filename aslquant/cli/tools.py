"""Build-time commands that parse their own options: ``synth`` and ``train-demo``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace


def _synth(argv: Sequence[str]) -> int:
    from aslquant.synth import synth_main

    return synth_main(list(argv))


def _train_demo(argv: Sequence[str]) -> int:
    from aslquant.train_demo import train_demo_main

    return train_demo_main(list(argv))


_DELEGATES: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "synth": ("generate synthetic ASL images", _synth),
    "train-demo": ("train the demo checkpoint", _train_demo),
}


def delegate(argv: Sequence[str]) -> Callable[[], int] | None:
    """The command to run when ``argv`` names a delegating command, else None."""
    if argv and argv[0] in _DELEGATES:
        run = _DELEGATES[argv[0]][1]
        return lambda: run(argv[1:])
    return None


def _module(name: str, help_text: str):
    def add_parser(sub) -> None:
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(func=None)

    return SimpleNamespace(add_parser=add_parser)


#: Listed by ``python -m aslquant --help``; run through ``delegate``.
COMMANDS = [_module(name, help_text) for name, (help_text, _) in _DELEGATES.items()]
