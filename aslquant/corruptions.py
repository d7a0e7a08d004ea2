"""Corrupted copies of evaluation images: the robustness split.

A dataset photo is cleaner than the frame a webcam hands the model: noisier, blurrier, darker,
smaller and JPEG-compressed. Published robustness studies of quantized CNNs find the INT8 gap
widens on such images, so aslquant measures FP32 and INT8 accuracy on corrupted copies too.

How a corruption is applied
---------------------------
To the decoded RGB image (``uint8``, height x width x 3) *before* preprocessing (resize, crop,
normalize), as a camera degrades the frame before any code sees it. Nothing is stored: the
copies are made on the fly from the evaluation images.

- **Severities** are exactly 1 (mild), 2 (moderate) and 3 (strong). The parameters of each are
  in ``CORRUPTIONS[name].levels`` and listed below. Where ImageNet-C (Hendrycks & Dietterich,
  ICLR 2019; ``ImageNet-C/imagenet_c/corruptions.py`` in github.com/hendrycks/robustness) has
  the same corruption, ours are taken from its milder levels, because a webcam in a room is
  not ImageNet-C's severity 5.
- **Sizes.** Blur and low-resolution parameters are stated for a 224-pixel image and scaled to
  the image's shorter side, so a severity looks the same after preprocessing whatever the
  source resolution. Noise is drawn per source pixel, like a sensor's, so shrinking a large
  photo to the model's input averages part of it away, as it would for a real camera frame.
- **Determinism.** The random draws come from a generator seeded with (corruption, severity,
  image index, seed), so the same call gives the same bytes, and every image gets its own
  noise.

The corruptions (severity 1 / 2 / 3)
------------------------------------
- ``gaussian_noise``: additive noise, sigma 0.04 / 0.08 / 0.16 of full scale (ImageNet-C
  level 1 is 0.08, level 3 0.18).
- ``impulse_noise``: salt and pepper, 1% / 3% / 9% of pixels set to white or black
  (ImageNet-C levels 1 and 3 are 3% and 9%, per channel value rather than per pixel).
- ``gaussian_blur``: sigma 1 / 2 / 3 pixels at 224 px (ImageNet-C levels 1 to 3).
- ``jpeg``: re-encoded at quality 40 / 20 / 10 (ImageNet-C: 25, 18, 15, 10, 7).
- ``brightness_contrast``: under-exposed and flat: contrast around the image mean scaled by
  0.7 / 0.5 / 0.3, then brightness by 0.8 / 0.6 / 0.4 (ImageNet-C's contrast levels are
  0.4 to 0.05; its brightness corruption brightens, which a webcam indoors rarely does).
- ``lowres_nearest`` / ``lowres_bilinear``: shrunk to 0.5 / 0.35 / 0.25 of its size (of 224 px
  at most) and enlarged back, both steps nearest-neighbour (blocky, aliased, like a cheap
  sensor's pixel skipping) or bilinear (smooth; Pillow antialiases the shrink). ImageNet-C's
  ``pixelate`` uses box filters at 0.6 to 0.25.
- ``webcam``: a cheap camera in a dim room, in the order the camera does it: lens blur sigma
  0.5 / 1 / 1.5 at 224 px, exposure (brightness 0.85 / 0.7 / 0.55, contrast 0.9 / 0.8 / 0.7),
  sensor noise sigma 0.02 / 0.04 / 0.08, then JPEG at quality 60 / 40 / 20.

``psnr`` measures the damage (dB; lower is more damaged); every corruption's PSNR falls as
its severity rises (tested on the demo images).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageFilter

from aslquant.errors import InputError

SEVERITIES: tuple[int, ...] = (1, 2, 3)
#: Blur and low-resolution parameters are given for an image whose shorter side is this.
REFERENCE_SIDE = 224

_Params = Mapping[str, float]
_Apply = Callable[[np.ndarray, _Params, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------------------------------------
# Building blocks (uint8 RGB in, uint8 RGB out)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _gaussian_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, sigma * 255.0, size=rgb.shape)
    return _to_uint8(rgb.astype(np.float64) + noise)


def _impulse_noise(rgb: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(rgb.shape[:2]) < amount
    salt = rng.random(rgb.shape[:2]) < 0.5
    out = rgb.copy()
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


def _scaled_sigma(rgb: np.ndarray, sigma_at_reference: float) -> float:
    return sigma_at_reference * min(rgb.shape[:2]) / REFERENCE_SIDE


def _blur(rgb: np.ndarray, sigma_at_reference: float) -> np.ndarray:
    sigma = _scaled_sigma(rgb, sigma_at_reference)
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma)))


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _exposure(rgb: np.ndarray, brightness: float, contrast: float) -> np.ndarray:
    x = rgb.astype(np.float64)
    mean = x.mean()  # over all channels, so the colour balance is kept
    return _to_uint8(brightness * (mean + contrast * (x - mean)))


def _low_resolution(rgb: np.ndarray, factor: float, resample: Image.Resampling) -> np.ndarray:
    height, width = rgb.shape[:2]
    short = min(height, width)
    target_short = max(1, round(min(short, REFERENCE_SIDE) * factor))
    scale = target_short / short
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(rgb).resize(small, resample).resize((width, height), resample)
    return np.asarray(image)


# ---------------------------------------------------------------------------------------------
# The corruptions


@dataclass(frozen=True)
class Corruption:
    """One corruption: its name, what it models, and its parameters at severities 1, 2, 3."""

    name: str
    title: str
    description: str
    levels: tuple[_Params, _Params, _Params]
    _apply: _Apply = field(repr=False, compare=False)

    def parameters(self, severity: int) -> _Params:
        return self.levels[check_severity(severity) - 1]

    def apply(self, rgb_uint8: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        """A corrupted copy of ``rgb_uint8`` (H x W x 3, uint8); the input is left unchanged."""
        rgb = _check_rgb(rgb_uint8)
        out = self._apply(rgb, self.parameters(severity), rng)
        assert out.shape == rgb.shape and out.dtype == np.uint8, (self.name, out.shape)
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "severities": {s: dict(p) for s, p in zip(SEVERITIES, self.levels, strict=True)},
        }


def _levels(*levels: dict[str, float]) -> tuple[_Params, _Params, _Params]:
    assert len(levels) == len(SEVERITIES)
    return tuple(MappingProxyType(level) for level in levels)  # type: ignore[return-value]


def _webcam(rgb: np.ndarray, p: _Params, rng: np.random.Generator) -> np.ndarray:
    out = _blur(rgb, p["blur_sigma"])
    out = _exposure(out, p["brightness"], p["contrast"])
    out = _gaussian_noise(out, p["noise_sigma"], rng)
    return _jpeg(out, int(p["jpeg_quality"]))


_ALL = (
    Corruption(
        "gaussian_noise",
        "Gaussian noise",
        "Sensor noise: every pixel value gets normal noise of standard deviation sigma "
        "(a fraction of full scale).",
        _levels({"sigma": 0.04}, {"sigma": 0.08}, {"sigma": 0.16}),
        lambda rgb, p, rng: _gaussian_noise(rgb, p["sigma"], rng),
    ),
    Corruption(
        "impulse_noise",
        "Impulse (salt and pepper) noise",
        "Dead and stuck pixels: a fraction of the pixels is set to pure white or black "
        "(half each).",
        _levels({"amount": 0.01}, {"amount": 0.03}, {"amount": 0.09}),
        lambda rgb, p, rng: _impulse_noise(rgb, p["amount"], rng),
    ),
    Corruption(
        "gaussian_blur",
        "Gaussian blur",
        "Out-of-focus lens: Gaussian blur of standard deviation sigma pixels at 224 px, "
        "scaled to the image's shorter side.",
        _levels({"sigma": 1.0}, {"sigma": 2.0}, {"sigma": 3.0}),
        lambda rgb, p, rng: _blur(rgb, p["sigma"]),
    ),
    Corruption(
        "jpeg",
        "JPEG compression",
        "A compressed video stream: the image re-encoded as JPEG at the given quality (Pillow).",
        _levels({"quality": 40}, {"quality": 20}, {"quality": 10}),
        lambda rgb, p, rng: _jpeg(rgb, int(p["quality"])),
    ),
    Corruption(
        "brightness_contrast",
        "Dark, low contrast",
        "Under-exposure: contrast around the image mean scaled by 'contrast', then every "
        "value scaled by 'brightness'.",
        _levels(
            {"brightness": 0.8, "contrast": 0.7},
            {"brightness": 0.6, "contrast": 0.5},
            {"brightness": 0.4, "contrast": 0.3},
        ),
        lambda rgb, p, rng: _exposure(rgb, p["brightness"], p["contrast"]),
    ),
    Corruption(
        "lowres_nearest",
        "Low resolution (nearest)",
        "A low-resolution sensor: shrunk to 'factor' of its size (224 px at most) and enlarged "
        "back, nearest-neighbour both ways (blocky).",
        _levels({"factor": 0.5}, {"factor": 0.35}, {"factor": 0.25}),
        lambda rgb, p, rng: _low_resolution(rgb, p["factor"], Image.Resampling.NEAREST),
    ),
    Corruption(
        "lowres_bilinear",
        "Low resolution (bilinear)",
        "A low-resolution sensor: shrunk to 'factor' of its size (224 px at most) and enlarged "
        "back, bilinear both ways (smooth).",
        _levels({"factor": 0.5}, {"factor": 0.35}, {"factor": 0.25}),
        lambda rgb, p, rng: _low_resolution(rgb, p["factor"], Image.Resampling.BILINEAR),
    ),
    Corruption(
        "webcam",
        "Webcam in a dim room",
        "Lens blur, then under-exposure, then sensor noise, then JPEG compression, in the "
        "order a cheap camera applies them.",
        _levels(
            {
                "blur_sigma": 0.5,
                "brightness": 0.85,
                "contrast": 0.9,
                "noise_sigma": 0.02,
                "jpeg_quality": 60,
            },
            {
                "blur_sigma": 1.0,
                "brightness": 0.7,
                "contrast": 0.8,
                "noise_sigma": 0.04,
                "jpeg_quality": 40,
            },
            {
                "blur_sigma": 1.5,
                "brightness": 0.55,
                "contrast": 0.7,
                "noise_sigma": 0.08,
                "jpeg_quality": 20,
            },
        ),
        _webcam,
    ),
)

#: Every corruption by name, in the order reports list them.
CORRUPTIONS: Mapping[str, Corruption] = MappingProxyType({c.name: c for c in _ALL})


# ---------------------------------------------------------------------------------------------
# Entry points


def check_severity(severity: object) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise InputError(f"corruption severity must be one of 1, 2, 3; got {severity!r}")
    if int(severity) not in SEVERITIES:
        raise InputError(f"corruption severity must be one of 1, 2, 3; got {severity}")
    return int(severity)


def corruption(name: str) -> Corruption:
    """The corruption called ``name``, or an InputError listing the valid names."""
    try:
        return CORRUPTIONS[name]
    except (KeyError, TypeError):
        valid = ", ".join(CORRUPTIONS)
        raise InputError(f"unknown corruption {name!r}; choose from {valid}") from None


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def corruption_rng(name: str, severity: int, index: int, seed: int) -> np.random.Generator:
    """The generator for one (corruption, severity, image index, seed): same inputs, same draws."""
    if index < 0 or seed < 0:
        raise InputError(f"corruption seed and image index must be >= 0, got {seed}, {index}")
    key = [int(seed), int(index), check_severity(severity), zlib.crc32(name.encode("utf-8"))]
    return np.random.default_rng(np.random.SeedSequence(key))


def corrupt_array(
    rgb_uint8: np.ndarray, name: str, severity: int, *, seed: int = 0, index: int = 0
) -> np.ndarray:
    """The corrupted copy of one decoded image (H x W x 3 uint8), deterministically."""
    spec = corruption(name)
    return spec.apply(rgb_uint8, severity, corruption_rng(name, severity, index, seed))


def corrupt(
    image: Image.Image, name: str, severity: int, *, seed: int = 0, index: int = 0
) -> Image.Image:
    """The corrupted copy of a decoded PIL image, as RGB, before any preprocessing.

    ``index`` is the image's position in the evaluation set, so each image gets its own noise
    and the whole split is reproducible from ``seed``.
    """
    rgb = np.asarray(image.convert("RGB"))
    return Image.fromarray(corrupt_array(rgb, name, severity, seed=seed, index=index), "RGB")


def psnr(original: np.ndarray, corrupted: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images (inf when identical)."""
    a, b = np.asarray(original, dtype=np.float64), np.asarray(corrupted, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))
