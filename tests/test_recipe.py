"""Every recipe field's declared constraint refuses bad values with a one-line message, and the
CLI flags and the reproduce command come from the same declarations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from aslquant import methods
from aslquant.cli import build_parser
from aslquant.cli.options import config_from_args, config_to_args
from aslquant.errors import InputError, UnsupportedCombination
from aslquant.recipe import FIELDS, Choice, Flag, Interval, LayerSet, OptionalFlag, QuantRecipe
from aslquant.run import RunConfig


def _invalid_values(constraint) -> list:
    """Values each kind of constraint must refuse."""
    if isinstance(constraint, Choice):
        return ["no-such-option", 3, None, ""]
    if isinstance(constraint, Interval):
        below, above = constraint.low - 1, constraint.high + 1
        values = [below, above, float("nan"), "8", True, None]
        if constraint.integer:
            values.append(constraint.low + 0.5)
        else:
            values.append(float("inf"))
        return values
    if isinstance(constraint, LayerSet):
        return [("conv9",), "conv1", 7]
    if isinstance(constraint, OptionalFlag):
        return ["on", 1, 0.0]
    if isinstance(constraint, Flag):
        return ["yes", 1, None]
    raise AssertionError(f"no invalid values for {constraint!r}")


CASES = [
    pytest.param(name, value, id=f"{name}={value!r}")
    for name, spec in FIELDS.items()
    for value in _invalid_values(spec.constraint)
]


@pytest.mark.parametrize("name, value", CASES)
def test_every_field_refuses_invalid_values_in_one_line(name, value):
    with pytest.raises(InputError) as caught:
        QuantRecipe(**{name: value})
    message = str(caught.value)
    assert FIELDS[name].label in message and "\n" not in message
    shown = [value, *value] if isinstance(value, tuple) else [value]  # a set names its bad member
    assert any(repr(v) in message or str(v) in message for v in shown)


def test_every_field_has_a_cli_flag_and_round_trips_through_the_command():
    parser = build_parser()
    recipe = QuantRecipe(
        act_observer="percentile",
        weight_observer="minmax",
        qscheme="affine",
        reduce_range=False,
        calib_images=32,
        keep_fp32=("conv1", "fc2"),
        fuse=False,
        equalize=True,
        bias_correction=True,
    )
    config = RunConfig(recipe=recipe)
    args = parser.parse_args(["report", *config_to_args(config), "--out", "x"])
    assert config_from_args(args) == config


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_each_method_round_trips_through_its_command(method):
    spec = methods.METHODS[method]
    recipe = QuantRecipe(method=method, keep_fp32=spec.keep_fp32_layers[-1:], calib_images=16)
    config = RunConfig(recipe=recipe)
    args = build_parser().parse_args(["report", *config_to_args(config), "--out", "x"])
    assert config_from_args(args).recipe.resolved() == recipe.resolved()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"method": "pt2e", "backend": "qnnpack"}, "runs on backend x86 only"),
        ({"method": "pt2e", "act_observer": "minmax"}, "chooses its own observers"),
        ({"method": "qat", "act_observer": "entropy"}, "cannot calibrate with the entropy"),
        ({"method": "fp16", "equalize": True}, "does not support --equalize on"),
        ({"method": "dynamic", "bias_correction": True}, "does not support --bias-correction"),
        ({"method": "dynamic", "keep_fp32": ("conv1",)}, "cannot keep conv1 in FP32"),
        ({"backend": "onednn", "qscheme": "affine"}, "only supports symmetric weights"),
    ],
)
def test_combinations_are_refused_when_the_recipe_is_made(changes, message):
    # The dashboard builds a recipe on every edit: a bad combination never reaches Quantize.
    with pytest.raises(UnsupportedCombination, match=message):
        QuantRecipe(**changes)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "0"], "--threads"),
        (["--threads", "1000"], "--threads"),
        (["--latency-runs", "29"], "--latency-runs"),
        (["--latency-runs", "1000001"], "--latency-runs"),
        (["--fail-if-drop", "nan"], "--fail-if-drop"),
        (["--fail-if-drop", "-1"], "--fail-if-drop"),
        (["--calib-images", "0"], "--calib-images"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_options_are_bounded(argv, message):
    from aslquant.cli import _Parser  # noqa: F401  (parse errors are InputError)

    parser = build_parser()
    with pytest.raises(InputError, match=message):
        args = parser.parse_args(["report", *argv, "--out", "x"])
        config_from_args(args)


def test_demo_flag_stands_for_a_shipped_demos_files_and_normalization():
    from aslquant.demos import demos

    parser = build_parser()
    for demo in demos().values():
        config = config_from_args(parser.parse_args(["report", "--demo", demo.name, "--out", "x"]))
        assert Path(config.checkpoint) == demo.checkpoint and Path(config.data) == demo.data
        assert (config.preprocess.mean, config.preprocess.std) == (
            demo.preprocess.mean,
            demo.preprocess.std,
        )
        args = config_to_args(config)
        again = config_from_args(parser.parse_args(["report", *args, "--out", "x"]))
        assert again == replace(config, recipe=config.recipe.resolved())
    # The same checkpoint with other normalization is not that demo: its flags are spelled out.
    fragile = demos()["fragile"]
    plain = RunConfig(checkpoint=str(fragile.checkpoint), recipe=QuantRecipe().resolved())
    args = config_to_args(plain)
    assert "--demo" not in args and str(fragile.checkpoint) in args
    assert config_from_args(parser.parse_args(["report", *args, "--out", "x"])) == plain
