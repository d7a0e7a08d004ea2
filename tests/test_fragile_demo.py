"""The fragile demo: trained the usual way, and its default INT8 recipe visibly hurts.

``sample_data/fragile/model.pth`` is the plain seed CustomCNN (no BatchNorm anywhere, so
nothing folded) trained on ImageNet-normalized renders with plain cross-entropy; see
sample_data/README.md. These tests pin, for the shipped checkpoint, the facts the demo exists
for: it is accurate in FP32, the default recipe (static, x86, histogram activations,
per-channel weights, reduce_range on) loses at least a point, 8-bit activations (reduce_range
off) bring that split back within 0.2 points, and the logit ties behind much of the loss.

Cost: one FP32 pass and two INT8 passes over 290 images, untimed (no figure here is a
latency): 4.7 s on one core (`taskset -c 0 pytest --durations=3 tests/test_fragile_demo.py`,
2026-11-26). The subset is the run's own
class-stratified split (``RunConfig.eval_images``: 10 images of every class, disjoint from the
64 calibration images) at the CLI's default seed 0. Measured with seeds 0..7 at 145..580 images, seed 0 at 290 keeps
the full set's picture (all 1,096 images: default 1.28 points lost, reduce_range off -0.46;
here 1.72 and -0.69, each two images clear of its threshold). It is a pin, not a statistical
claim: over seeds 0..7 the default loses 0.73-2.28 points and reduce_range off -0.46-1.09
(sample_data/README.md), so 0.2 is not met on every seed.
"""

from __future__ import annotations

import pytest

from aslquant.data import IMAGENET_MEAN, IMAGENET_STD
from aslquant.demos import demos
from aslquant.labels import load_labels
from aslquant.model import load_checkpoint
from aslquant.run import RunConfig, RunResult, execute

#: FP32 top-1 the fragile demo must keep on the subset (0.8759 there, 0.8767 on all 1,160).
FP32_FLOOR = 0.85
#: Class-stratified evaluation subset and calibration seed (see the module docstring).
EVAL_IMAGES = 290
SEED = 0


@pytest.fixture(scope="module")
def fragile():
    return demos()["fragile"]


@pytest.fixture(scope="module")
def runs(fragile) -> tuple[RunResult, RunResult]:
    config = RunConfig(
        checkpoint=str(fragile.checkpoint),
        labels=str(fragile.labels),
        data=str(fragile.data),
        preprocess=fragile.preprocess,
        eval_images=EVAL_IMAGES,
        seed=SEED,
    )
    default = execute(config, timed=False)
    # Same calibration and evaluation images; the FP32 side is measured once and reused.
    remedy = execute(config.with_recipe(reduce_range=False), baseline=default.baseline, timed=False)
    return default, remedy


def test_fragile_demo_is_in_the_manifest_and_loads(fragile):
    names = load_labels(fragile.labels)
    model = load_checkpoint(fragile.checkpoint, num_labels=len(names))
    assert model.num_classes == 29
    assert fragile.checkpoint.stat().st_size < 1_500_000
    assert fragile.preprocess.mean == IMAGENET_MEAN
    assert fragile.preprocess.std == IMAGENET_STD
    # Shares labels and images with the robust demo; only the checkpoint differs.
    robust = demos()["robust"]
    assert (fragile.labels, fragile.data) == (robust.labels, robust.data)
    assert fragile.checkpoint != robust.checkpoint


@pytest.mark.slow
def test_fp32_accuracy_is_decent(runs):
    default, _ = runs
    assert default.n_eval == EVAL_IMAGES
    assert default.fp32.accuracy >= FP32_FLOOR


@pytest.mark.slow
def test_default_recipe_loses_at_least_one_point(runs):
    default, _ = runs
    recipe = default.quantized.recipe
    assert (recipe.method, recipe.backend, recipe.act_observer) == ("static", "x86", "histogram")
    assert recipe.weight_observer == "per-channel" and recipe.reduce_range is True
    assert default.accuracy_drop_points >= 1.0


@pytest.mark.slow
def test_eight_bit_activations_bring_it_back(runs):
    default, remedy = runs
    assert remedy.quantized.recipe.reduce_range is False
    assert [i.display for i in remedy.calib_items] == [i.display for i in default.calib_items]
    assert remedy.accuracy_drop_points <= 0.2


def _top2_ties(probs5) -> int:
    """Images whose two most probable classes have exactly the same probability."""
    return int((probs5[:, 0] == probs5[:, 1]).sum())


@pytest.mark.slow
def test_seven_bit_logits_tie_where_float_logits_do_not(runs):
    # The mechanism behind much of the loss: the logits leave fc2 quantized, and with a wide
    # logit range (no label smoothing) a 7-bit grid makes the top two classes equal on many
    # images (27 of the 290 here, against 10 with 8 bits); torch.topk then picks one of them.
    default, remedy = runs
    assert _top2_ties(default.evaluation.fp32.probs5) == 0
    assert _top2_ties(default.evaluation.quant.probs5) >= 0.05 * default.n_eval
    assert _top2_ties(remedy.evaluation.quant.probs5) < _top2_ties(default.evaluation.quant.probs5)
