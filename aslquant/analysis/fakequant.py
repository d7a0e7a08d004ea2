"""Fake quantization: an affine INT grid described once (``QParams``), applied with torch's own ops.

Everything that rounds values onto a grid goes through ``torch.fake_quantize_per_tensor_affine``
/ ``torch.fake_quantize_per_channel_affine`` or a ``torch.ao.quantization.FakeQuantize`` module
with explicit ``quant_min``/``quant_max``; grids for N bits come from torch's own observers
(``MinMaxObserver`` / ``PerChannelMinMaxObserver``), so scales and zero points are rounded the
way torch rounds them. ``fake_quantize`` is the playground's maths on a sample of values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.ao.quantization as tq

from aslquant.analysis.common import finite_or_none, sqnr_db
from aslquant.recipe import Interval

#: Bit widths any analysis accepts (the bit sweep, the simulator, the playground).
#: 2 is the smallest width where both grids mean something: a signed 1-bit weight grid is
#: {-1, 0} x scale, so every positive weight would round to 0, while 2 bits give {-2..1}.
#: 16 is the widest a quantized tensor holds in torch (qint32 codes cover it comfortably);
#: nothing in this tool runs wider integer kernels.
BITS = Interval(2, 16)

#: Integer range of each torch quantized dtype (torch.iinfo does not accept them).
DTYPE_RANGE: dict[torch.dtype, tuple[int, int]] = {
    torch.quint8: (0, 255),
    torch.qint8: (-128, 127),
    torch.qint32: (-(2**31), 2**31 - 1),
}

#: RMSE of pure rounding on a grid of step 1: a uniform error on [-1/2, 1/2] has this RMS.
ROUNDING_RMSE_STEPS = 1.0 / math.sqrt(12.0)


def check_bits(bits: int, what: str = "bits") -> int:
    """``bits`` as a whole number in BITS, or InputError naming ``what``."""
    return int(BITS.check(what, bits))


def _observer_dtype(quant_min: int, quant_max: int) -> torch.dtype:
    """The narrowest torch quantized dtype whose range holds [quant_min, quant_max]."""
    for dtype in (torch.quint8, torch.qint8, torch.qint32):
        lo, hi = DTYPE_RANGE[dtype]
        if lo <= quant_min and quant_max <= hi:
            return dtype
    raise ValueError(f"no quantized dtype holds {quant_min}..{quant_max}")


@dataclass(frozen=True)
class QParams:
    """An affine integer grid: ``value = (code - zero_point) * scale``, codes clamped to
    ``quant_min..quant_max``. Per tensor (``axis`` None, one scale) or per channel along
    ``axis`` (one scale and zero point per channel)."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quant_min: int
    quant_max: int
    axis: int | None = None

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int, quant_min: int, quant_max: int) -> QParams:
        return cls((float(scale),), (int(zero_point),), int(quant_min), int(quant_max))

    @classmethod
    def of(cls, t: torch.Tensor) -> QParams | None:
        """The grid of a torch quantized tensor (None for a float tensor)."""
        if not isinstance(t, torch.Tensor) or not t.is_quantized:
            return None
        lo, hi = DTYPE_RANGE[t.dtype]
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            return cls(
                tuple(float(s) for s in t.q_per_channel_scales()),
                tuple(int(z) for z in t.q_per_channel_zero_points()),
                lo,
                hi,
                int(t.q_per_channel_axis()),
            )
        return cls.per_tensor(t.q_scale(), t.q_zero_point(), lo, hi)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def bits(self) -> int:
        """Bits needed for the codes the grid may use."""
        return int(math.ceil(math.log2(self.quant_max - self.quant_min + 1)))

    @property
    def scale_max(self) -> float:
        return max(self.scale)

    def clip_range(self, channel: int = 0) -> tuple[float, float]:
        """The smallest and largest value the grid represents (of one channel)."""
        s, z = self.scale[channel], self.zero_point[channel]
        return (self.quant_min - z) * s, (self.quant_max - z) * s

    def levels(self, channel: int = 0) -> np.ndarray:
        """Every representable value (of one channel), ascending."""
        s, z = self.scale[channel], self.zero_point[channel]
        return (np.arange(self.quant_min, self.quant_max + 1) - z) * s

    def _scale_tensor(self) -> torch.Tensor:
        return torch.tensor(self.scale, dtype=torch.float32)

    def _zero_point_tensor(self) -> torch.Tensor:
        return torch.tensor(self.zero_point, dtype=torch.int32)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded onto this grid and back to float (torch.fake_quantize_*)."""
        x = x.float()
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(
                x, self.scale[0], self.zero_point[0], self.quant_min, self.quant_max
            )
        return torch.fake_quantize_per_channel_affine(
            x,
            self._scale_tensor(),
            self._zero_point_tensor(),
            self.axis,
            self.quant_min,
            self.quant_max,
        )

    def load_into(self, fq: tq.FakeQuantize) -> None:
        """Make ``fq`` apply this grid (observer off: the grid is given, not measured)."""
        fq.disable_observer()
        fq.scale = self._scale_tensor()
        fq.zero_point = self._zero_point_tensor()
        fq.activation_post_process.quant_min = self.quant_min
        fq.activation_post_process.quant_max = self.quant_max
        fq.quant_min, fq.quant_max = self.quant_min, self.quant_max
        fq.is_per_channel = self.axis is not None
        if self.axis is not None:
            fq.ch_axis = self.axis

    def module(self) -> tq.FakeQuantize:
        """A FakeQuantize module applying this grid, switched on."""
        dtype = _observer_dtype(self.quant_min, self.quant_max)
        if self.axis is None:
            observer, extra = tq.MinMaxObserver, {"qscheme": torch.per_tensor_affine}
        else:
            observer = tq.PerChannelMinMaxObserver
            extra = {"qscheme": torch.per_channel_affine, "ch_axis": self.axis}
        fq = tq.FakeQuantize(
            observer=observer,
            quant_min=self.quant_min,
            quant_max=self.quant_max,
            dtype=dtype,
            **extra,
        )
        self.load_into(fq)
        return fq

    def to_dict(self) -> dict:
        return {
            "scale": list(self.scale),
            "zero_point": list(self.zero_point),
            "quant_min": self.quant_min,
            "quant_max": self.quant_max,
            "axis": self.axis,
        }


def unsigned_range(bits: int) -> tuple[int, int]:
    return 0, 2**bits - 1


def signed_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def activation_qparams(low: float, high: float, bits: int) -> QParams:
    """Affine unsigned ``bits`` grid over [low, high] (widened to include 0), as torch's
    MinMaxObserver computes it."""
    qmin, qmax = unsigned_range(check_bits(bits))
    observer = tq.MinMaxObserver(
        dtype=_observer_dtype(qmin, qmax),
        qscheme=torch.per_tensor_affine,
        quant_min=qmin,
        quant_max=qmax,
    )
    observer(torch.tensor([float(low), float(high)]))
    scale, zero_point = observer.calculate_qparams()
    return QParams.per_tensor(float(scale), int(zero_point), qmin, qmax)


def weight_qparams(weight: torch.Tensor, bits: int, per_channel: bool, symmetric: bool) -> QParams:
    """Signed ``bits`` grid for ``weight`` as torch's weight observers compute it
    (per output channel or per tensor, symmetric or affine)."""
    qmin, qmax = signed_range(check_bits(bits))
    dtype = _observer_dtype(qmin, qmax)
    if per_channel:
        scheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        observer = tq.PerChannelMinMaxObserver(
            ch_axis=0, dtype=dtype, qscheme=scheme, quant_min=qmin, quant_max=qmax
        )
    else:
        scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        observer = tq.MinMaxObserver(dtype=dtype, qscheme=scheme, quant_min=qmin, quant_max=qmax)
    observer(weight.detach().float())
    scale, zero_point = observer.calculate_qparams()
    if per_channel:
        return QParams(
            tuple(float(s) for s in scale), tuple(int(z) for z in zero_point), qmin, qmax, 0
        )
    return QParams.per_tensor(float(scale), int(zero_point), qmin, qmax)


def rescale_activation(qparams: QParams, nominal_bits: int, bits: int) -> QParams:
    """The same calibrated range re-divided into ``bits`` levels.

    The calibrated range is what the observer chose: codes ``0 .. 2^nominal_bits - 1``
    (7 bits with reduce_range, though the stored quint8 may hold codes up to 255).
    """
    _, top = unsigned_range(nominal_bits)
    s, z = qparams.scale[0], qparams.zero_point[0]
    return activation_qparams((0 - z) * s, (top - z) * s, bits)


# --- the playground ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FakeQuantResult:
    """Values quantized onto a grid and back, with the error split into rounding and clipping.

    ``rounding_mse + clipping_mse == mse`` (each a sum over its values divided by the count of
    all values); ``range`` is the representable [low, high].
    """

    dequantized: np.ndarray
    scale: float
    zero_point: int
    bits: int
    rounding_mse: float
    clipping_mse: float
    mse: float
    sqnr_db: float | None
    clipped_fraction: float
    range: tuple[float, float]

    def to_dict(self) -> dict:
        return {
            "dequantized": self.dequantized,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "bits": self.bits,
            "rounding_mse": self.rounding_mse,
            "clipping_mse": self.clipping_mse,
            "mse": self.mse,
            "sqnr_db": self.sqnr_db,
            "clipped_fraction": self.clipped_fraction,
            "range": list(self.range),
        }


def fake_quantize(
    values: np.ndarray,
    bits: int,
    clip_min: float,
    clip_max: float,
    zero_point: int | None = None,
) -> FakeQuantResult:
    """Quantize ``values`` to ``bits`` unsigned levels over [clip_min, clip_max] and back.

    Affine like torch: the range is widened to include 0, scale and zero point are what
    torch's MinMaxObserver picks for that range; ``zero_point`` overrides the observer's.
    Values more than half a step outside the representable range count as clipped.
    """
    grid = activation_qparams(clip_min, clip_max, bits)
    if zero_point is not None:
        zp = int(zero_point)
        if not grid.quant_min <= zp <= grid.quant_max:
            raise ValueError(
                f"zero point must be in {grid.quant_min}..{grid.quant_max}, got {zero_point}"
            )
        grid = QParams.per_tensor(grid.scale[0], zp, grid.quant_min, grid.quant_max)
    values = np.asarray(values, dtype=np.float64)
    deq = grid.fake_quantize(torch.as_tensor(values)).double().numpy()
    scale = grid.scale[0]
    low, high = grid.clip_range()
    clipped = (values < low - scale / 2) | (values > high + scale / 2)
    err = (deq - values) ** 2
    n = max(1, values.size)
    total = float(err.sum())
    return FakeQuantResult(
        dequantized=deq,
        scale=float(scale),
        zero_point=grid.zero_point[0],
        bits=int(bits),
        rounding_mse=float(err[~clipped].sum() / n),
        clipping_mse=float(err[clipped].sum() / n),
        mse=total / n,
        sqnr_db=finite_or_none(sqnr_db(float((values**2).sum()), total)),
        clipped_fraction=float(clipped.mean()) if values.size else 0.0,
        range=(float(low), float(high)),
    )
