"""aslquant.corruptions: deterministic, shape-preserving, and more damaging at each severity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from aslquant import corruptions as C
from aslquant.errors import InputError

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "images"
RANDOM = {"gaussian_noise", "impulse_noise", "webcam"}


def _demo_rgb(name: str) -> np.ndarray:
    with Image.open(SAMPLE / name) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def demo_images() -> list[np.ndarray]:
    return [_demo_rgb(name) for name in ("A/A1.jpg", "M/M3.jpg", "space/space2.jpg")]


def test_the_issue_list_is_covered_with_three_documented_severities():
    assert set(C.CORRUPTIONS) == {
        "gaussian_noise",
        "impulse_noise",
        "gaussian_blur",
        "jpeg",
        "brightness_contrast",
        "lowres_nearest",
        "lowres_bilinear",
        "webcam",
    }
    for spec in C.CORRUPTIONS.values():
        described = spec.to_dict()
        assert list(described["severities"]) == [1, 2, 3]
        assert described["description"] and described["title"]
        assert spec.parameters(2) == spec.levels[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_damage_grows_with_severity(name, demo_images):
    for rgb in demo_images:
        scores = [C.psnr(rgb, C.corrupt_array(rgb, name, s, index=5)) for s in C.SEVERITIES]
        assert scores[0] > scores[1] > scores[2], scores
        assert scores[0] < 60  # even severity 1 changes the image


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_same_call_same_bytes_and_shape_kept(name, demo_images):
    rgb = demo_images[0]
    before = rgb.copy()
    first = C.corrupt_array(rgb, name, 2, seed=7, index=3)
    assert np.array_equal(rgb, before)  # the input is not modified
    assert first.shape == rgb.shape and first.dtype == np.uint8
    assert first.tobytes() == C.corrupt_array(rgb, name, 2, seed=7, index=3).tobytes()
    other_image = C.corrupt_array(rgb, name, 2, seed=7, index=4)
    other_seed = C.corrupt_array(rgb, name, 2, seed=8, index=3)
    if name in RANDOM:  # every image, and every seed, gets its own noise
        assert not np.array_equal(first, other_image)
        assert not np.array_equal(first, other_seed)
    else:
        assert np.array_equal(first, other_image) and np.array_equal(first, other_seed)
    for shape in ((13, 9, 3), (200, 300, 3), (8, 8, 3)):
        odd = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        out = C.corrupt_array(odd, name, 3)
        assert out.shape == shape and out.dtype == np.uint8


def test_pil_entry_point_returns_an_rgb_copy_of_the_same_size():
    gray = Image.fromarray(np.full((40, 60), 128, np.uint8), "L")
    out = C.corrupt(gray, "webcam", 1, seed=1, index=0)
    assert out.mode == "RGB" and out.size == (60, 40)
    again = C.corrupt(gray, "webcam", 1, seed=1, index=0)
    assert out.tobytes() == again.tobytes()


def test_invalid_names_severities_and_seeds_are_input_errors():
    rgb = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(InputError, match="unknown corruption 'fog'; choose from gaussian_noise"):
        C.corrupt_array(rgb, "fog", 1)
    for severity in (0, 4, "2", 2.0, True, None):
        with pytest.raises(InputError, match="severity must be one of 1, 2, 3"):
            C.corrupt_array(rgb, "jpeg", severity)
    with pytest.raises(InputError, match=">= 0"):
        C.corrupt_array(rgb, "gaussian_noise", 1, seed=-1)
    with pytest.raises(ValueError):
        C.corrupt_array(np.zeros((10, 10), np.uint8), "jpeg", 1)
    with pytest.raises(ValueError):
        C.corrupt_array(np.zeros((10, 10, 3), np.float32), "jpeg", 1)


# ---------------------------------------------------------------------------------------------
# Each corruption does what its parameters say


def test_noise_has_the_documented_strength():
    gray = np.full((200, 200, 3), 128, np.uint8)
    noisy = C.corrupt_array(gray, "gaussian_noise", 2).astype(float) - 128
    assert noisy.std() == pytest.approx(0.08 * 255, rel=0.03)
    assert abs(noisy.mean()) < 0.5
    hit = C.corrupt_array(gray, "impulse_noise", 3)
    changed = np.any(hit != 128, axis=2)
    assert changed.mean() == pytest.approx(0.09, abs=0.01)  # 40,000 pixels: SE 0.0014
    assert set(np.unique(hit[changed])) == {0, 255}
    assert np.all(hit[changed].min(axis=1) == hit[changed].max(axis=1))  # whole pixels


def test_brightness_contrast_by_hand():
    rgb = np.array([[[0, 100, 200], [50, 150, 250]]], np.uint8)  # mean 125
    out = C.corrupt_array(rgb, "brightness_contrast", 2)  # brightness 0.6, contrast 0.5
    expected = np.rint(0.6 * (125 + 0.5 * (rgb.astype(float) - 125)))
    assert np.array_equal(out, expected.astype(np.uint8))


def test_blur_scales_with_the_image_and_low_resolution_makes_blocks():
    rgb = np.random.default_rng(1).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    blurred = C.corrupt_array(rgb, "gaussian_blur", 1)  # sigma 1 at 224 px is 2 at 448 px
    reference = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(2.0)))
    assert np.array_equal(blurred, reference)
    small = rgb[:224, :224]
    blocks = C.corrupt_array(small, "lowres_nearest", 1)  # 224 -> 112 -> 224: 2x2 blocks
    assert np.array_equal(blocks[0::2, 0::2], blocks[1::2, 1::2])
    assert np.array_equal(blocks[0::2, 0::2], blocks[0::2, 1::2])
    smooth = C.corrupt_array(small, "lowres_bilinear", 1)
    assert not np.array_equal(smooth[0::2, 0::2], smooth[1::2, 1::2])


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert C.psnr(a, a) == float("inf")
    b = a.copy()
    b[...] = 255  # mse = 255^2: 0 dB
    assert C.psnr(a, b) == pytest.approx(0.0)
    b[...] = 1  # mse = 1: 20 log10(255)
    assert C.psnr(a, b) == pytest.approx(20 * np.log10(255))
