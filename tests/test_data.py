"""Preprocessing vs hand-computed values, image decoding, layouts, zips and sampling."""

from __future__ import annotations

import io
import os
import random
import struct
import time
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aslquant import data
from aslquant.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LabeledImage,
    Preprocess,
    dataset_fingerprint,
    iter_batches,
    load_image_set,
    load_tensors,
    open_image,
    sample,
    stratified_split,
)
from aslquant.errors import InputError

ASL = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + ["del", "nothing", "space"]


def _rgb(r: np.ndarray, g: int, b: int) -> Image.Image:
    """Image whose red channel is ``r`` (HxW) and green/blue are constants."""
    h, w = r.shape
    arr = np.stack([r, np.full((h, w), g), np.full((h, w), b)], axis=2).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# ------------------------------------------------------------------ preprocessing: validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_size": 67},
        {"input_size": 1025},
        {"input_size": 513},
        {"input_size": "224"},
        {"input_size": True},
        {"scale": 2},
        {"mean": IMAGENET_MEAN},
        {"std": IMAGENET_STD},
        {"mean": (0.5, 0.5), "std": (1, 1)},
        {"mean": IMAGENET_MEAN, "std": (0.2, 0.0, 0.2)},
        {"crop": "yes"},
    ],
)
def test_preprocess_validation(kwargs: dict) -> None:
    with pytest.raises(InputError, match="preprocessing"):
        Preprocess(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mean": (0.5, 0.5, 0.5), "std": (1e-300, 0.2, 0.2)}, "std [1e-300, 0.2, 0.2] must be"),
        ({"mean": (0.5, 0.5, 0.5), "std": (1e-7, 0.2, 0.2)}, "at least 1e-06 in float32"),
        ({"mean": (0.5, 0.5, 0.5), "std": (-0.2, 0.2, 0.2)}, "at least 1e-06"),
        ({"mean": (0.5, 0.5, 0.5), "std": (1e39, 0.2, 0.2)}, "as float32 it is [inf"),
        ({"mean": (1e39, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}, "outside -1000..1000"),
        ({"mean": (5000, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}, "mean [5000.0, 0.5, 0.5]"),
        ({"input_size": 1024}, "needs about 289 MB of activations per image"),
    ],
)
def test_preprocess_bounds_checked_in_float32(kwargs: dict, needle: str) -> None:
    # float64 would accept all of these; in float32 they overflow or vanish (issue 14).
    with pytest.raises(InputError, match="preprocessing") as err:
        Preprocess(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_preprocess_extremes_within_bounds_give_finite_tensors() -> None:
    white = Image.new("RGB", (68, 68), (255, 255, 255))
    pp = Preprocess(input_size=68, scale=255, mean=(-1000, 0, 1000), std=(1e-6, 1e-6, 1e-6))
    assert torch.isfinite(pp.apply(white)).all()
    assert Preprocess(input_size=data.MAX_INPUT_SIZE).input_size == 512
    assert data.activation_bytes(224) == 4 * (
        3 * 224**2
        + 16 * (2 * 220**2 + 110**2)
        + 32 * (2 * 106**2 + 53**2)
        + 64 * (2 * 51**2 + 25**2)
        + 128 * (2 * 21**2 + 10**2)
    )


def test_preprocess_dict_round_trip() -> None:
    pp = Preprocess(input_size=96, crop=True, scale=255, mean=[1, 2, 3], std=[4, 5, 6], bgr=True)
    assert pp.mean == (1.0, 2.0, 3.0) and pp.std == (4.0, 5.0, 6.0)
    d = pp.to_dict()
    assert d == {
        "input_size": 96,
        "crop": True,
        "scale": 255,
        "mean": [1.0, 2.0, 3.0],
        "std": [4.0, 5.0, 6.0],
        "bgr": True,
    }
    assert Preprocess.from_dict(d) == pp
    assert Preprocess.from_dict({}) == Preprocess()
    with pytest.raises(InputError, match="unknown option"):
        Preprocess.from_dict({"size": 224})


# ------------------------------------------------------------------ preprocessing: values


def test_downscale_is_antialiased_bilinear() -> None:
    # 136 -> 68 (factor 2): Pillow's bilinear support widens to 2 input pixels, so output j
    # mixes inputs 2j-1..2j+2 with weights 1/8, 3/8, 3/8, 1/8. A step 0 | 200 at x=68 gives
    # 0.., 200/8 = 25, 200*7/8 = 175, ..200. (Point-sampled bilinear would give 0, 200.)
    r = np.where(np.arange(136)[None, :] < 68, 0, 200).repeat(136, axis=0)
    x = Preprocess(input_size=68, scale=255).apply(_rgb(r, 100, 50))
    assert x.dtype == torch.float32 and x.shape == (3, 68, 68)
    expected = [0.0] * 33 + [25.0, 175.0] + [200.0] * 33
    for row in x[0]:
        assert row.tolist() == expected
    assert torch.all(x[1] == 100) and torch.all(x[2] == 50)


def test_upscale_bilinear() -> None:
    # 34 -> 68 (factor 1/2): output xx samples input at (xx + .5) / 2 - .5 with triangle weights:
    # at the step (0 | 200 at x=17) xx=33 -> .75*0 + .25*200 = 50, xx=34 -> .25*0 + .75*200 = 150.
    r = np.where(np.arange(34)[None, :] < 17, 0, 200).repeat(34, axis=0)
    x = Preprocess(input_size=68, scale=255).apply(_rgb(r, 10, 20))
    assert x[0, 5].tolist() == [0.0] * 33 + [50.0, 150.0] + [200.0] * 33


@pytest.mark.parametrize(("width", "left"), [(140, 36), (137, 34), (139, 36)])
def test_center_crop_offsets_round_like_torchvision(width: int, left: int) -> None:
    # Height equals the size, so Resize(68) is a no-op and the crop offset is
    # int(round((w - 68) / 2)): 72/2 = 36, 69/2 = 34.5 -> 34 and 71/2 = 35.5 -> 36 (half to even).
    r = np.arange(width)[None, :].repeat(68, axis=0)
    x = Preprocess(input_size=68, crop=True, scale=255).apply(_rgb(r, 0, 0))
    assert x[0, 0].tolist() == [float(v) for v in range(left, left + 68)]
    tall = np.arange(width)[:, None].repeat(68, axis=1)  # a portrait image: crop from the top
    y = Preprocess(input_size=68, crop=True, scale=255).apply(_rgb(tall, 0, 0))
    assert y[0, :, 0].tolist() == [float(v) for v in range(left, left + 68)]


def test_shorter_side_resize_rounds_down() -> None:
    pp = Preprocess(input_size=68, crop=True, scale=255)
    assert pp.resized_size(100, 70) == (97, 68)  # int(68 * 100 / 70) = int(97.14)
    assert pp.resized_size(70, 100) == (68, 97)
    assert Preprocess(input_size=68).resized_size(100, 70) == (68, 68)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8), "RGB")
    want = img.resize((97, 68), Image.BILINEAR).crop((14, 0, 82, 68))  # round(29 / 2) = 14
    got = pp.apply(img)
    assert torch.equal(got, torch.from_numpy(np.asarray(want).transpose(2, 0, 1).astype("f4")))


def test_scale_normalize_and_bgr() -> None:
    img = Image.new("RGB", (68, 68), (51, 102, 204))
    f = np.float32

    def pixel(pp: Preprocess) -> list[float]:
        return pp.apply(img)[:, 7, 9].tolist()

    assert pixel(Preprocess(input_size=68, scale=255)) == [51.0, 102.0, 204.0]
    assert pixel(Preprocess(input_size=68)) == pytest.approx([0.2, 0.4, 0.8], abs=1e-7)
    assert pixel(Preprocess(input_size=68, bgr=True)) == pytest.approx([0.8, 0.4, 0.2], abs=1e-7)
    norm = pixel(Preprocess(input_size=68, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    want = [
        (f(v) - f(m)) / f(s)
        for v, m, s in zip((0.2, 0.4, 0.8), IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ]
    assert norm == pytest.approx(want, abs=1e-6)
    assert norm[0] == pytest.approx(-1.2445415, abs=1e-6)  # (0.2 - 0.485) / 0.229
    # BGR first, then mean/std per network channel (as Normalize after a cv2 BGR load).
    bgr = pixel(Preprocess(input_size=68, bgr=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert bgr == pytest.approx([0.6, -0.2, -0.6], abs=1e-6)
    raw = pixel(Preprocess(input_size=68, scale=255, mean=(50, 100, 200), std=(2, 2, 4)))
    assert raw == [0.5, 1.0, 1.0]


def test_apply_array_matches_apply() -> None:
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    pp = Preprocess(input_size=72, crop=True, mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr=True)
    assert torch.equal(pp.apply_array(frame), pp.apply(Image.fromarray(frame, "RGB")))
    with pytest.raises(InputError, match="frame"):
        pp.apply_array(frame.astype(np.float32))
    with pytest.raises(InputError, match="frame"):
        pp.apply_array(frame[:, :, 0])


# ------------------------------------------------------------------ open_image


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("img", "fmt", "want"),
    [
        (Image.new("RGBA", (16, 16), (10, 20, 30, 40)), "PNG", (10, 20, 30)),
        (Image.new("L", (16, 16), 77), "PNG", (77, 77, 77)),
        (Image.new("LA", (16, 16), (90, 0)), "PNG", (90, 90, 90)),
        (Image.new("RGB", (16, 16), (200, 10, 10)).quantize(4), "PNG", (200, 10, 10)),
        (Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
        (Image.new("1", (16, 16), 1), "PNG", (255, 255, 255)),
        (Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16)), "PNG", (128, 128, 128)),
        (Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)), "TIFF", (255, 255, 255)),
    ],
)
def test_any_mode_becomes_rgb(img: Image.Image, fmt: str, want: tuple[int, int, int]) -> None:
    out = open_image(_encode(img, fmt), name=f"x.{fmt.lower()}")
    assert out.mode == "RGB" and out.size == (16, 16)
    got = out.getpixel((5, 5))
    assert all(abs(a - b) <= 2 for a, b in zip(got, want, strict=True)), (img.mode, got)


def test_16_bit_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    out = np.asarray(open_image(_encode(Image.fromarray(ramp), "PNG")))[:, :, 0]
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    out = open_image(path)
    assert out.size == (20, 40)  # width and height swapped
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_decompression_bombs_refused_quickly() -> None:
    for w, h in ((100_000, 100_000), (7_000, 7_000)):  # > 2x the limit, and just above it
        assert w * h > data.MAX_IMAGE_PIXELS
        start = time.perf_counter()
        with pytest.raises(InputError, match="pixel limit"):
            open_image(_png_header_only(w, h), name="bomb.png")
        assert time.perf_counter() - start < 1.0


def test_unusable_images(tmp_path: Path) -> None:
    good = _encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), "u1")), "JPEG"
    )
    cases = {
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"hello, not an image", "not a readable image"),
        "cut.jpg": (good[: len(good) // 2], "corrupt or truncated"),
        "eps.jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a readable image"),
        "tiny.png": (_encode(Image.new("RGB", (4, 4)), "PNG"), "too small"),
    }
    for fname, (content, needle) in cases.items():
        path = tmp_path / fname
        path.write_bytes(content)
        with pytest.raises(InputError) as err:
            open_image(path)
        assert str(err.value).startswith(f"{path}: ") and needle in str(err.value), fname
    with pytest.raises(InputError, match="not found"):
        open_image(tmp_path / "missing.jpg")


# ------------------------------------------------------------------ layouts


def test_imagefolder_case_insensitive(tmp_image_folder) -> None:
    root = tmp_image_folder(["a", "b", "DEL"], per_class=3)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / ".DS_Store").write_bytes(b"\0")
    s = load_image_set(root, ["A", "B", "del", "space"])
    assert s.layout == "imagefolder" and s.source == str(root.resolve())
    assert s.counts() == {"A": 3, "B": 3, "del": 3, "space": 0}
    assert [i.display for i in s.items[:3]] == ["DEL/DEL0.jpg", "DEL/DEL1.jpg", "DEL/DEL2.jpg"]
    assert all(Path(i.path).is_file() and os.path.isabs(i.path) for i in s.items)
    assert {s.class_names[i.label] for i in s.items if i.display.startswith("a/")} == {"A"}
    assert sorted(s.skipped) == [
        ("a/notes.txt", "not an image file"),
        ("b/.DS_Store", "hidden or system file"),
    ]


def _kaggle_train(root: Path, classes=("A", "B", "del", "nothing", "space"), n: int = 2) -> Path:
    for c in classes:
        d = root / "asl_alphabet_train" / "asl_alphabet_train" / c
        d.mkdir(parents=True)
        for k in range(1, n + 1):
            Image.new("RGB", (24, 24), (k * 50, 0, 0)).save(d / f"{c}{k}.jpg")
    return root


def _kaggle_test(root: Path, classes=("A", "B", "nothing", "space")) -> Path:
    d = root / "asl_alphabet_test" / "asl_alphabet_test"
    d.mkdir(parents=True)
    for c in classes:
        Image.new("RGB", (24, 24), (0, 90, 0)).save(d / f"{c}_test.jpg")
    Image.new("RGB", (24, 24)).save(d / "B12.jpg")  # class before the digits
    Image.new("RGB", (24, 24)).save(d / "zebra_test.jpg")  # no such class
    return root


def test_kaggle_nested_train(tmp_path: Path) -> None:
    s = load_image_set(_kaggle_train(tmp_path / "kaggle"), ASL)
    assert s.layout == "imagefolder"
    counts = s.counts()
    assert {k: v for k, v in counts.items() if v} == {
        "A": 2,
        "B": 2,
        "del": 2,
        "nothing": 2,
        "space": 2,
    }
    assert s.items[0].display == "asl_alphabet_train/asl_alphabet_train/A/A1.jpg"


def test_kaggle_flat_test(tmp_path: Path) -> None:
    s = load_image_set(_kaggle_test(tmp_path / "kt"), ASL)
    assert s.layout == "flat"
    names = {Path(i.display).name: s.class_names[i.label] for i in s.items}
    assert names == {
        "A_test.jpg": "A",
        "B_test.jpg": "B",
        "B12.jpg": "B",
        "nothing_test.jpg": "nothing",
        "space_test.jpg": "space",
    }
    assert s.skipped == [
        ("asl_alphabet_test/asl_alphabet_test/zebra_test.jpg", "file name matches no class label")
    ]


def _zip_dir(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    return dest


def test_zip_of_kaggle_layout_uses_cache(tmp_path: Path) -> None:
    z = _zip_dir(_kaggle_train(tmp_path / "k", n=3), tmp_path / "asl.zip")
    s = load_image_set(z, ASL)
    assert s.layout == "imagefolder" and s.source == str(z.resolve())
    assert s.digest and sum(s.counts().values()) == 15
    cache = Path(os.environ["ASLQUANT_CACHE_DIR"])
    assert Path(s.root).is_relative_to(cache)
    assert all(Path(i.path).is_file() for i in s.items)
    assert s.items[0].display == "asl_alphabet_train/asl_alphabet_train/A/A1.jpg"
    again = load_image_set(z, ASL)
    assert again.root == s.root and dataset_fingerprint(again) == dataset_fingerprint(s)


def test_zip_of_flat_folder(tmp_image_folder, tmp_path: Path) -> None:
    root = tmp_image_folder(["A", "B"], per_class=2, layout="flat")
    s = load_image_set(_zip_dir(root, tmp_path / "flat.zip"), ["A", "B"])
    assert s.layout == "flat" and s.counts() == {"A": 2, "B": 2}


def _evil_zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("A/ok1.jpg", _encode(Image.new("RGB", (16, 16)), "JPEG"))
        zf.writestr("B/ok2.jpg", _encode(Image.new("RGB", (16, 16)), "JPEG"))
        for n in names:
            zf.writestr(zipfile.ZipInfo(n), b"owned")
    return path


@pytest.mark.parametrize(
    "member", ["../evil.txt", "A/../../evil.jpg", "/tmp/evil_abs.jpg", "C:\\evil.jpg"]
)
def test_zip_slip_refused_and_nothing_written(tmp_path: Path, member: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    z = _evil_zip(work / "evil.zip", [member])
    assert member in zipfile.ZipFile(z).namelist()
    with pytest.raises(InputError, match="path traversal"):
        load_image_set(z, ["A", "B"])
    cache = Path(os.environ["ASLQUANT_CACHE_DIR"])
    written = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert not [p for p in written if "evil" in p.name or "ok1" in p.name]
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil_abs.jpg").exists()
    assert not (work.parent / "evil.jpg").exists()


def test_zip_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    z = _evil_zip(tmp_path / "many.zip", [f"A/x{i}.jpg" for i in range(6)])
    monkeypatch.setattr(data, "MAX_ZIP_MEMBERS", 5)
    with pytest.raises(InputError, match="8 entries .files and folders.; the limit is 5"):
        load_image_set(z, ["A", "B"])
    monkeypatch.setattr(data, "MAX_ZIP_MEMBERS", 100)
    monkeypatch.setattr(data, "MAX_ZIP_BYTES", 100)
    with pytest.raises(InputError, match="the limit is 100 bytes"):
        load_image_set(z, ["A", "B"])


def test_nested_archive_and_symlink_members_ignored(tmp_path: Path) -> None:
    inner = _evil_zip(tmp_path / "inner.zip", [])
    z = tmp_path / "outer.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i, cls in enumerate(("A", "B")):
            zf.writestr(f"{cls}/{cls}.png", _encode(Image.new("RGB", (16, 16), (i, 0, 0)), "PNG"))
        zf.write(inner, "A/inner.zip")
        link = zipfile.ZipInfo("B/link.jpg")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("B/readme.md", "hi")
    s = load_image_set(z, ["A", "B"])
    assert s.counts() == {"A": 1, "B": 1}
    assert ("A/inner.zip", "nested archive ignored") in s.skipped
    assert ("B/link.jpg", "symlink in archive ignored") in s.skipped
    assert ("B/readme.md", "not an image file") in s.skipped
    assert not (Path(s.root) / "A" / "inner.zip").exists()
    assert not (Path(s.root) / "B" / "link.jpg").exists()


def test_symlinks_do_not_escape_root(tmp_image_folder, tmp_path: Path) -> None:
    root = tmp_image_folder(["A", "B"], per_class=2)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (16, 16)).save(outside / "secret.jpg")
    (root / "A" / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "B" / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "A" / "inside.jpg").symlink_to(root / "B" / "B0.jpg")
    (root / "C").symlink_to(outside, target_is_directory=True)  # a "class" folder elsewhere
    s = load_image_set(root, ["A", "B", "C"])
    displays = {i.display for i in s.items}
    assert s.counts()["C"] == 0 and ("C/", "symlinked folder not followed") in s.skipped
    assert "A/escape.jpg" not in displays and "A/inside.jpg" in displays
    assert not any("secret" in d for d in displays)
    assert ("A/escape.jpg", "symlink leads outside the folder") in s.skipped
    assert ("B/dirlink/", "symlinked folder not followed") in s.skipped


def test_partial_and_mismatched_class_folders(tmp_image_folder) -> None:
    root = tmp_image_folder(["A", "B", "delete"], per_class=1)
    s = load_image_set(root, ["A", "B", "del"])
    assert s.counts() == {"A": 1, "B": 1, "del": 0}
    assert ("delete/", "folder matches no class label") in s.skipped
    with pytest.raises(InputError) as err:
        load_image_set(root, ["x", "y"])
    msg = str(err.value)
    assert "class folders do not match the labels" in msg and "'delete'" in msg and "'x'" in msg


def test_image_set_errors(tmp_path: Path, tmp_image_folder) -> None:
    with pytest.raises(InputError, match="not found"):
        load_image_set(tmp_path / "nope", ["A", "B"])
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder or a .zip"):
        load_image_set(tmp_path / "file.txt", ["A", "B"])
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(InputError, match="not a valid zip"):
        load_image_set(tmp_path / "fake.zip", ["A", "B"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        load_image_set(tmp_path / "empty", ["A", "B"])
    one = tmp_image_folder(["A"], per_class=2, name="one")
    with pytest.raises(InputError, match="only one class"):
        load_image_set(one, ["A", "B"])
    with pytest.raises(InputError, match="at least 2"):
        load_image_set(one, ["A"])


# ------------------------------------------------------------------ tensors


def test_iter_batches_streams_and_skips_corrupt(tmp_image_folder) -> None:
    root = tmp_image_folder(["A", "B"], per_class=5, size=(40, 30))
    good = (root / "A" / "A0.jpg").read_bytes()
    (root / "A" / "A_cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "B" / "B_empty.jpg").write_bytes(b"")
    s = load_image_set(root, ["A", "B"])
    assert ("B/B_empty.jpg", "empty file") in s.skipped  # caught while listing
    assert len(s.items) == 11
    skipped: list = []
    pp = Preprocess(input_size=68)
    batches = list(iter_batches(s.items, pp, batch_size=4, skipped=skipped))
    assert [len(b.items) for b in batches] == [4, 4, 2]
    assert len(skipped) == 1 and skipped[0][0] == "A/A_cut.jpg"
    assert "corrupt or truncated" in skipped[0][1]
    for b in batches:
        assert b.x.shape == (len(b.items), 3, 68, 68) and b.x.dtype == torch.float32
        assert b.y.tolist() == [i.label for i in b.items]
    first = batches[0]
    assert torch.equal(first.x[0], pp.apply(open_image(first.items[0].path)))
    whole = load_tensors(s.items, pp)
    assert whole.x.shape == (10, 3, 68, 68)
    assert load_tensors([], pp).x.shape == (0, 3, 68, 68)


def test_dataset_fingerprint(tmp_image_folder) -> None:
    root = tmp_image_folder(["A", "B"], per_class=2)
    fp = dataset_fingerprint(load_image_set(root, ["A", "B"]))
    assert fp == dataset_fingerprint(load_image_set(root, ["A", "B"]))
    assert fp != dataset_fingerprint(load_image_set(root, ["A", "B", "C"]))
    path = root / "A" / "A0.jpg"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert fp != dataset_fingerprint(load_image_set(root, ["A", "B"]))


# ------------------------------------------------------------------ sampling


def _items(per_class: dict[int, int]) -> list[LabeledImage]:
    return [
        LabeledImage(path=f"/d/{c}/{k}.jpg", display=f"{c}/{k}.jpg", label=c)
        for c, n in per_class.items()
        for k in range(n)
    ]


def test_split_deterministic_and_order_independent() -> None:
    items = _items({c: 20 for c in range(5)})
    calib, ev = stratified_split(items, 12, 30, seed=7)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert (calib, ev) == stratified_split(shuffled, 12, 30, seed=7)
    assert calib != stratified_split(items, 12, 30, seed=8)[0]


def test_split_disjoint_and_balanced() -> None:
    items = _items({c: 20 for c in range(5)})
    calib, ev = stratified_split(items, 12, None, seed=3)
    assert len(calib) == 12 and len(ev) == 88
    assert not {i.path for i in calib} & {i.path for i in ev}
    assert set(Counter(i.label for i in calib).values()) == {2, 3}
    _, ev10 = stratified_split(items, 12, 10, seed=3)
    assert Counter(i.label for i in ev10) == {c: 2 for c in range(5)}
    # Small classes run out; the rest keep being dealt.
    uneven = _items({0: 1, 1: 10, 2: 10})
    calib, ev = stratified_split(uneven, 9, None, seed=0)
    assert Counter(i.label for i in calib) == {0: 1, 1: 4, 2: 4}
    assert len(ev) == 12


def test_sample() -> None:
    items = _items({0: 6, 1: 6, 2: 6})
    picked = sample(items, 6, seed=1)
    assert Counter(i.label for i in picked) == {0: 2, 1: 2, 2: 2}
    assert picked == sample(list(reversed(items)), 6, seed=1)
    assert sorted(sample(items, None, seed=1), key=lambda i: i.path) == sorted(
        items, key=lambda i: i.path
    )
    with pytest.raises(InputError):
        sample(items, -1, seed=0)
    with pytest.raises(InputError):
        stratified_split(items, 2, -3, seed=0)


def test_matches_torch_to_tensor_and_normalize_bitwise() -> None:
    # What torchvision's ToTensor + Normalize compute, written with torch ops.
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (68, 68, 3), dtype=np.uint8)
    ref = torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    ref = ref.sub(mean).div(std)
    got = Preprocess(input_size=68, mean=IMAGENET_MEAN, std=IMAGENET_STD).apply_array(arr)
    assert torch.equal(got, ref)
