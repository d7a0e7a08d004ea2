"""``RunAnalysis``: the analysis state of one run, held explicitly and passed to analyses.

A ``RunResult`` is frozen and shared (the dashboard caches it across sessions); analyses never
write into it. What is worth keeping between questions about the same run (the quantized
model's grids, the per-layer rows, activation histograms, the simulator's plan) lives here
instead, computed on first use. Give one ``RunAnalysis`` to every analysis of the run
(``layer_histogram``, ``bit_sweep``, ``diagnose_points`` ...), or let each make its own.
"""

from __future__ import annotations

import threading

from aslquant.analysis.capture import ObservedRange, QuantizedLayers, inspect_quantized, observe
from aslquant.analysis.common import LAYER_IMAGES, Progress, calibration_images
from aslquant.analysis.histograms import (
    ActivationValues,
    Histogram,
    activation_values,
    layer_histogram,
)
from aslquant.analysis.layer_error import LayerError, layer_errors_from
from aslquant.analysis.simulate import QuantSim, SimPlan, sim_plan
from aslquant.run import RunResult

#: Calibration images activation ranges and histograms are drawn from (at most).
RANGE_IMAGES = 64


class RunAnalysis:
    """Analyses of one run, each computed once (thread-safe) and kept for the next question.

    The result is only read. Per-layer rows are kept per ``max_images``, activation values per
    number of bins; the simulator's plan once. ``simulator()`` builds a fresh ``QuantSim`` each
    call (its switches are state of its own).
    """

    def __init__(self, result: RunResult) -> None:
        self._result = result
        self._lock = threading.RLock()
        self._inspected: QuantizedLayers | None = None
        self._layers: dict[int | None, tuple[LayerError, ...]] = {}
        self._activations: dict[int, dict[str, ActivationValues]] = {}
        self._observed: dict[str, ObservedRange] | None = None
        self._plan: SimPlan | None = None

    @property
    def result(self) -> RunResult:
        return self._result

    def inspected(self) -> QuantizedLayers:
        """Each layer's weights and grids as the quantized model uses them."""
        with self._lock:
            if self._inspected is None:
                r = self._result
                self._inspected = inspect_quantized(r.quantized, r.config.preprocess.input_size)
            return self._inspected

    def layers(
        self, max_images: int | None = LAYER_IMAGES, progress: Progress | None = None
    ) -> tuple[LayerError, ...]:
        """Per-layer rows (``layer_errors``) over the first ``max_images`` evaluation images."""
        with self._lock:
            if max_images not in self._layers:
                self._layers[max_images] = layer_errors_from(
                    self._result, self.inspected(), max_images, progress
                )
            return self._layers[max_images]

    def activation_values(self, bins: int) -> dict[str, ActivationValues]:
        """Every layer's FP32 activation histogram over the calibration images."""
        with self._lock:
            if bins not in self._activations:
                r = self._result
                self._activations[bins] = activation_values(
                    r.float_reference,
                    calibration_images(r, RANGE_IMAGES),
                    self.inspected(),
                    self.observed_ranges(),
                    bins,
                )
            return self._activations[bins]

    def histogram(self, layer: str, kind: str = "weights", bins: int = 120) -> Histogram:
        """``histograms.layer_histogram`` of this run."""
        return layer_histogram(self, layer, kind, bins)

    def observed_ranges(self) -> dict[str, ObservedRange]:
        """The FP32 input and every layer output over the calibration images: per-channel
        ranges and a sample of values (``capture.observe``)."""
        with self._lock:
            if self._observed is None:
                r = self._result
                self._observed = observe(r.float_reference, calibration_images(r, RANGE_IMAGES))
            return self._observed

    def sim_plan(self) -> SimPlan:
        """Every quantization point's grid, for the simulator."""
        with self._lock:
            if self._plan is None:
                self._plan = sim_plan(self._result, self.inspected(), self.observed_ranges)
            return self._plan

    def simulator(self) -> QuantSim:
        """A new simulator of this run, configured like its quantized model."""
        return QuantSim(self._result.float_reference, self.sim_plan())


def as_analysis(run: RunResult | RunAnalysis) -> RunAnalysis:
    """``run`` itself if it is already a RunAnalysis, else a new one for it."""
    return run if isinstance(run, RunAnalysis) else RunAnalysis(run)
