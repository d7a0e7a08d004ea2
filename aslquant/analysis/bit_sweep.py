"""Bit-width sweep: simulated accuracy and SQNR with every quantization point at N bits.

Runs on the quantization simulator (``analysis.simulate``): every point the recipe quantizes
(the input included) at N bits. Weights are re-observed with the recipe's granularity and
scheme (torch's weight observers at N bits); activations keep the run's calibrated ranges,
re-divided into 2^N levels. Float math throughout: these rows are simulated, not INT8 kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from aslquant.analysis.common import (
    VARIANT_IMAGES,
    Progress,
    evaluate_variants,
    finite_or_none,
    power,
    sqnr_db,
)
from aslquant.analysis.fakequant import check_bits
from aslquant.analysis.run_analysis import RunAnalysis, as_analysis
from aslquant.analysis.simulate import KIND_WEIGHT, QuantSim, point_layer_kind
from aslquant.errors import InputError
from aslquant.run import RunResult

#: The widths the sweep simulates unless told otherwise.
DEFAULT_BITS: tuple[int, ...] = (8, 6, 5, 4, 3, 2)


@dataclass(frozen=True)
class BitSweepRow:
    """One row of report.json's ``bit_sweep``: accuracy as fractions, SQNR in dB, drop in points."""

    bits: int
    accuracy: float
    agreement: float
    drop_points: float
    #: All simulated weights against FP32.
    weight_sqnr_db: float | None
    #: The model's logits against FP32's (every point's error carried to the output).
    activation_sqnr_db: float | None
    simulated: bool
    label: str
    fp32_accuracy: float
    int8_accuracy: float
    n_images: int
    range_source: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def bit_sweep(
    run: RunResult | RunAnalysis,
    bits: Iterable[int] = DEFAULT_BITS,
    progress: Progress | None = None,
    max_images: int | None = VARIANT_IMAGES,
) -> tuple[BitSweepRow, ...]:
    """Simulated accuracy and SQNR with weights and activations at each width in ``bits``,
    evaluated together over the first ``max_images`` evaluation images."""
    bits = tuple(bits)
    if not bits:
        raise InputError("bit sweep: give at least one bit width")
    bits = tuple(check_bits(b, "bit width") for b in bits)
    analysis = as_analysis(run)
    result = analysis.result
    plan = analysis.sim_plan()
    sim = QuantSim(result.float_reference, plan)
    configs = {b: plan.at_bits(b) for b in bits}
    weight_sqnr = {}
    for b, config in configs.items():
        signal = noise = 0.0
        for name, grid in config.items():
            layer, kind = point_layer_kind(name)
            if kind != KIND_WEIGHT:
                continue
            w = plan.fp32_weights[layer]
            signal += power(w)
            noise += power(grid.fake_quantize(w) - w)
        weight_sqnr[b] = finite_or_none(sqnr_db(signal, noise))
    ev = evaluate_variants(
        result,
        {str(b): (sim.runner(configs[b]), None) for b in bits},
        max_images,
        progress,
        "bit sweep (simulated)",
        keep_logits=True,
    )
    rows = []
    for b in bits:
        s = ev.score(str(b))
        rows.append(
            BitSweepRow(
                bits=b,
                accuracy=s.accuracy,
                agreement=s.agreement,
                drop_points=s.drop_points,
                weight_sqnr_db=weight_sqnr[b],
                activation_sqnr_db=ev.logit_sqnr_db[str(b)],
                simulated=True,
                label=f"{b}-bit (simulated)",
                fp32_accuracy=ev.fp32_accuracy,
                int8_accuracy=ev.int8_accuracy,
                n_images=ev.n,
                range_source=plan.range_source,
            )
        )
    return tuple(rows)
