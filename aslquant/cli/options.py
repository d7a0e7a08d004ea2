"""The options every model-and-data command shares, declared once.

The same declarations build the argparse flags (``add_run_options``), turn parsed flags into a
``RunConfig`` (``config_from_args``) and turn a ``RunConfig`` back into the flags that reproduce
it (``config_to_args``: the command shown on the dashboard and written into report.json). Recipe
flags are generated from ``aslquant.recipe.FIELDS``, so a new recipe field is a new flag with its
bounds, without touching this file.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aslquant.recipe import FIELDS, Choice, Flag, Interval, LayerSet, OptionalFlag, QuantRecipe

if TYPE_CHECKING:
    from aslquant.run import RunConfig


def on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


def whole_number(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], refused with the allowed range."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < low or (high is not None and number > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bound}, got {number}")
        return number

    return parse


def finite_number(low: float = -math.inf, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (NaN and infinities refused)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number) or not low <= number <= high:
            raise argparse.ArgumentTypeError(
                f"expected a finite number in {low:g}..{high:g}, got {value}"
            )
        return number

    return parse


#: A drop or gap in percentage points: finite and >= 0 (NaN would make a gate never fire).
points = finite_number(0.0, 100.0)


# --- recipe flags, generated from the recipe's declared fields --------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_recipe_flag(group, name: str) -> None:
    spec, default = FIELDS[name], _RECIPE_DEFAULTS[name]
    c = spec.constraint
    help_text = f"{spec.help} ({c.describe()})"
    if isinstance(c, Choice):
        group.add_argument(_flag(name), choices=list(c.options), default=default, help=help_text)
    elif isinstance(c, Interval):
        kind = whole_number(int(c.low), int(c.high)) if c.integer else finite_number(c.low, c.high)
        group.add_argument(_flag(name), type=kind, default=default, help=help_text)
    elif isinstance(c, LayerSet):
        group.add_argument(_flag(name), nargs="+", default=[], metavar="LAYER", help=help_text)
    elif isinstance(c, OptionalFlag):
        group.add_argument(_flag(name), type=on_off, default=None, metavar="on|off",
                           help=f"{spec.help} (on/off; default: the backend's)")  # fmt: skip
    elif isinstance(c, Flag):
        group.add_argument(_flag(name), type=on_off, default=default, metavar="on|off",
                           help=f"{spec.help} (default {'on' if default else 'off'})")  # fmt: skip


_RECIPE_DEFAULTS = {f.name: f.default for f in fields(QuantRecipe) if f.name in FIELDS}
_RECIPE_DEFAULTS["keep_fp32"] = ()


def _recipe_from_args(args: argparse.Namespace) -> QuantRecipe:
    values = {name: getattr(args, name) for name in FIELDS}
    values["keep_fp32"] = tuple(values["keep_fp32"])
    return QuantRecipe(**values)


def _recipe_args(recipe: QuantRecipe) -> list[str]:
    """The recipe's flags: everything that matters for its method, spelled out."""
    spec = recipe.method_spec
    wanted = ["method", "backend"]
    if spec.uses_observers:
        wanted += ["act_observer", "reduce_range"]
    if spec.weight_settings:
        wanted += ["weight_observer", "qscheme"]
    if spec.calibrates or spec.trains:
        wanted += ["calib_images"]
    args: list[str] = []
    for name in FIELDS:
        value = getattr(recipe, name)
        if name == "reduce_range":
            value = recipe.effective_reduce_range
        if name not in wanted and value == _RECIPE_DEFAULTS[name]:
            continue
        if name == "keep_fp32":
            args += [_flag(name), *value] if value else []
        elif isinstance(value, bool):
            args += [_flag(name), "on" if value else "off"]
        else:
            args += [_flag(name), str(value)]
    return args


# --- the other shared options ------------------------------------------------------------------


@dataclass(frozen=True)
class _Path:
    """A file or folder option and the RunConfig field it fills."""

    flag: str
    field: str
    help: str


_INPUTS = (
    _Path("--checkpoint", "checkpoint", "state_dict .pth of the CustomCNN"),
    _Path("--labels", "labels", "lb.pkl (joblib LabelBinarizer), labels.txt or JSON list"),
    _Path("--data", "data", "evaluation images: class folders, Kaggle layout, flat or .zip"),
    _Path(
        "--calib-data", "calib_data", "calibration images (default: images of --data not evaluated)"
    ),  # fmt: skip
    _Path("--train-data", "train_data", "labelled training images for --method qat"),
)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every subcommand that loads a model and data."""
    from aslquant.data import MAX_INPUT_SIZE
    from aslquant.demos import DEFAULT_DEMO, demos
    from aslquant.model import MIN_INPUT_SIZE
    from aslquant.run import EVAL_IMAGES, LATENCY_RUNS, MAX_THREADS, SEEDS

    g = p.add_argument_group("inputs (default: the demo in sample_data/)")
    g.add_argument("--demo", choices=list(demos()), default=None,
                   help=f"a shipped demo's checkpoint, labels, images and preprocessing (default "
                        f"{DEFAULT_DEMO}); --checkpoint/--labels/--data and --mean/--std/"
                        "--imagenet override its parts")  # fmt: skip
    for option in _INPUTS:
        g.add_argument(option.flag, help=option.help)
    g.add_argument("--eval-images", type=whole_number(1, int(EVAL_IMAGES.high)),
                   help="evaluation images (default: all available)")  # fmt: skip
    g.add_argument("--seed", type=whole_number(0, int(SEEDS.high)), default=0,
                   help="seed for sampling images (default 0)")  # fmt: skip
    r = p.add_argument_group("quantization recipe")
    for name in FIELDS:
        _add_recipe_flag(r, name)
    pre = p.add_argument_group("preprocessing (must match how the checkpoint was trained)")
    pre.add_argument("--input-size", type=whole_number(MIN_INPUT_SIZE, MAX_INPUT_SIZE),
                     default=224, help=f"square input side ({MIN_INPUT_SIZE}..{MAX_INPUT_SIZE})")  # fmt: skip
    pre.add_argument("--center-crop", action="store_true",
                     help="resize the shorter side then center-crop (default: resize to a square)")  # fmt: skip
    pre.add_argument("--scale", type=int, choices=[1, 255], default=1,
                     help="1: pixels in 0..1 (ToTensor); 255: keep 0..255")  # fmt: skip
    pre.add_argument("--mean", type=finite_number(), nargs=3, metavar=("R", "G", "B"))
    pre.add_argument("--std", type=finite_number(), nargs=3, metavar=("R", "G", "B"))
    pre.add_argument("--imagenet", action="store_true", help="ImageNet mean/std")
    pre.add_argument("--bgr", action="store_true", help="feed channels as BGR (OpenCV-trained)")
    m = p.add_argument_group("measurement")
    m.add_argument("--threads", type=whole_number(1, MAX_THREADS), default=None,
                   help=f"torch threads for timing (1..{MAX_THREADS}, this machine's logical "
                        "cores; default: those this process may use, at most 4)")  # fmt: skip
    p.add_argument("--verbose", action="store_true", help="also print library warnings")
    m.add_argument("--latency-runs", type=whole_number(int(LATENCY_RUNS.low), int(LATENCY_RUNS.high)),
                   default=30, help="timed calls per latency figure (30..1000)")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The frozen RunConfig an argparse namespace describes."""
    from aslquant.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from aslquant.demos import demos
    from aslquant.engine_lock import default_threads
    from aslquant.run import RunConfig

    demo = demos()[args.demo] if getattr(args, "demo", None) else None
    mean, std = args.mean, args.std
    if args.imagenet:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if demo is not None and mean is None and std is None:
        mean, std = demo.preprocess.mean, demo.preprocess.std
    preprocess = Preprocess(
        input_size=args.input_size,
        crop=args.center_crop,
        scale=args.scale,
        mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None,
        bgr=args.bgr,
    )
    defaults = RunConfig()
    demo_paths = {
        "checkpoint": str(demo.checkpoint) if demo else None,
        "labels": str(demo.labels) if demo else None,
        "data": str(demo.data) if demo else None,
    }
    paths = {
        o.field: getattr(args, o.field) or demo_paths.get(o.field) or getattr(defaults, o.field)
        for o in _INPUTS
    }
    return RunConfig(
        **paths,
        preprocess=preprocess,
        recipe=_recipe_from_args(args),
        eval_images=args.eval_images,
        seed=args.seed,
        threads=args.threads or default_threads(),
        latency_runs=args.latency_runs,
    )


def config_to_args(config: RunConfig) -> list[str]:
    """The flags that reproduce ``config`` (demo paths and default settings left out)."""
    from aslquant.engine_lock import default_threads
    from aslquant.run import RunConfig

    defaults = RunConfig()
    args: list[str] = []
    demo = _demo_of(config)
    if demo is not None and demo.checkpoint != Path(defaults.checkpoint):
        args += ["--demo", demo.name]  # the short, portable form of its files and preprocessing
    for option in _INPUTS:
        value = getattr(config, option.field)
        default = getattr(defaults, option.field)
        if demo is not None and option.field in ("checkpoint", "labels", "data"):
            default = str(getattr(demo, option.field))
        if value and value != default:
            args += [option.flag, value]
    args += _recipe_args(config.recipe)
    if config.eval_images is not None:
        args += ["--eval-images", str(config.eval_images)]
    pp = config.preprocess
    args += ["--input-size", str(pp.input_size), "--scale", str(pp.scale)]
    if pp.crop:
        args.append("--center-crop")
    if pp.mean is not None and demo is None:
        args += ["--mean", *map(str, pp.mean), "--std", *map(str, pp.std)]
    if pp.bgr:
        args.append("--bgr")
    args += ["--seed", str(config.seed)]
    if config.threads != default_threads():
        args += ["--threads", str(config.threads)]
    if config.latency_runs != defaults.latency_runs:
        args += ["--latency-runs", str(config.latency_runs)]
    return args


def _demo_of(config: RunConfig):
    """The shipped demo whose checkpoint and normalization ``config`` uses, if any (then
    ``--demo NAME`` stands for them)."""
    from aslquant.demos import demos

    pp = config.preprocess
    for demo in demos().values():
        if Path(config.checkpoint).resolve() == demo.checkpoint.resolve() and (pp.mean, pp.std) == (
            demo.preprocess.mean,
            demo.preprocess.std,
        ):
            return demo
    return None


def grid_flag(name: str) -> str:
    """The sweep flag that lists several values of a recipe field (``--act-observers``)."""
    return _flag(name) + "s"


def add_grid_options(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """Sweep flags: several values per recipe field, from the same declarations."""
    g = p.add_argument_group("grid (default: static on x86, every observer pair)")
    for name in names:
        c = FIELDS[name].constraint
        if isinstance(c, Choice):
            g.add_argument(grid_flag(name), dest=f"grid_{name}", nargs="+",
                           choices=list(c.options))  # fmt: skip
        elif isinstance(c, Flag | OptionalFlag):
            g.add_argument(grid_flag(name), dest=f"grid_{name}", nargs="+", type=on_off,
                           metavar="on|off")  # fmt: skip


def grid_from_args(args: argparse.Namespace, names: Sequence[str]) -> dict[str, list[Any]]:
    grid = {}
    for name in names:
        values = getattr(args, f"grid_{name}", None)
        if values:
            grid[name] = list(dict.fromkeys(values))
    return grid


def grid_to_args(grid: dict[str, list[Any]]) -> list[str]:
    args: list[str] = []
    for name, values in grid.items():
        args.append(grid_flag(name))
        args += ["on" if v is True else "off" if v is False else str(v) for v in values]
    return args
