"""Hostile image sources (issue 14): zips, folder trees and images.

Zips: 2 million folder entries (honest, and with an end record that understates them), a
file and a folder of one name, a 300-character component, 1,100 levels, an over-long path, a
ZIP64 end record declaring 2^40 entries. Folders: a tree 1,100 levels deep. Images: a
progressive JPEG with 1,000 extra scans. Each refused with one line, in bounded memory and
time, in one measured child process; the zip cache stays under its cap by evicting the least
recently used extraction.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aslquant import data
from aslquant.data import iter_batches, load_image_set
from aslquant.errors import InputError
from aslquant.run import DEMO_DATA
from tests.hostile import (
    check_cli_refusal,
    check_refused,
    directory_entries_zip,
    end_records,
    run_cases,
    run_cli,
)

DEMO_IMAGE = (DEMO_DATA / "A" / "A1.jpg").read_bytes()


def _image_zip(path: Path, extra: dict[str, bytes]) -> Path:
    """A zip of a few real demo images plus ``extra`` members."""
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("A", "B"):
            for src in sorted((DEMO_DATA / cls).glob("*.jpg"))[:2]:
                zf.writestr(f"{cls}/{src.name}", src.read_bytes())
        for name, content in extra.items():
            zf.writestr(name, content)
    return path


def _deep_tree(root: Path, levels: int) -> Path:
    """``root/A/d/d/.../d/A1.jpg`` ``levels`` folders deep, made without recursion."""
    folder = root / "A"
    folder.mkdir(parents=True)
    (root / "B").mkdir()
    for src in sorted((DEMO_DATA / "B").glob("*.jpg"))[:2]:
        (root / "B" / src.name).write_bytes(src.read_bytes())
    for _ in range(levels):
        folder = folder / "d"
        os.mkdir(folder)
    (folder / "A1.jpg").write_bytes(DEMO_IMAGE)
    return root


def _remove_deep_tree(root: Path) -> None:
    """shutil.rmtree recurses per level; remove a deep tree bottom-up instead."""
    for dirpath, dirnames, filenames in _walk_bottom_up(root):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))


def _walk_bottom_up(root: Path):
    order, stack = [], [str(root)]
    while stack:
        top = stack.pop()
        entries = list(os.scandir(top))
        dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        order.append((top, dirs, [e.name for e in entries if e.name not in dirs]))
        stack.extend(os.path.join(top, d) for d in dirs)
    return reversed(order)


def scan_bomb_jpeg(extra_scans: int, side: int = 256) -> bytes:
    """A progressive JPEG whose last scan is repeated ``extra_scans`` times before EOI.

    Repeating a scan is legal for the decoder (libjpeg warns and decodes it again): each copy
    is one more pass over every block, which is how 120,000 scans stall a 36 MP image.
    """
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", progressive=True, quality=90)
    jpeg = buf.getvalue()
    last = [m.start() for m in re.finditer(b"\xff\xda", jpeg)][-1]
    return jpeg[:-2] + jpeg[last:-2] * extra_scans + b"\xff\xd9"


def _hostile_sources(tmp: Path) -> dict[str, tuple[str, Path, str]]:
    """name -> (loader kind, path, expected text)."""
    long_component = "A/" + "d" * 300 + "/A1.jpg"
    deep = "A/" + "d/" * 1100 + "A1.jpg"
    long_path = "A/" + "/".join(["p" * 250] * 5) + "/A1.jpg"
    cases = {
        "dirs-2M.zip": ("images", "zip lists 2000000 entries"),
        "dirs-2M-understated.zip": ("images", "zip central directory is 110000000 bytes"),
        "dirs-300k-understated.zip": ("images", "zip holds more than 200000 entries"),
        "zip64-2e40-entries.zip": ("images", "zip lists 1099511627776 entries"),
        "file-and-folder.zip": ("images", "zip member 'A/x.jpg' is both a file and a folder"),
        "component-300.zip": ("images", "has a 300-character name component"),
        "depth-1100.zip": ("images", "is 1102 levels deep; the limit is 32"),
        "path-1270-bytes.zip": ("images", "bytes; the limit is 1024"),
        "tree-1100": ("images", "folders nested more than 32 levels below A/"),
        "scan-bomb.jpg": ("image", "JPEG with 1010 scans; at most 64"),
    }
    (tmp / "dirs-2M.zip").write_bytes(directory_entries_zip(2_000_000))
    (tmp / "dirs-2M-understated.zip").write_bytes(directory_entries_zip(2_000_000, 10))
    (tmp / "dirs-300k-understated.zip").write_bytes(directory_entries_zip(300_000, 10))
    (tmp / "zip64-2e40-entries.zip").write_bytes(end_records(1 << 40, 0, 0))
    _image_zip(tmp / "file-and-folder.zip", {"A/x.jpg": DEMO_IMAGE, "A/x.jpg/A2.jpg": DEMO_IMAGE})
    _image_zip(tmp / "component-300.zip", {long_component: DEMO_IMAGE})
    _image_zip(tmp / "depth-1100.zip", {deep: DEMO_IMAGE})
    _image_zip(tmp / "path-1270-bytes.zip", {long_path: DEMO_IMAGE})
    _deep_tree(tmp / "tree-1100", 1100)
    (tmp / "scan-bomb.jpg").write_bytes(scan_bomb_jpeg(1000))
    return {name: (kind, tmp / name, needle) for name, (kind, needle) in cases.items()}


@pytest.mark.slow
def test_hostile_sources_refused_in_bounded_memory_and_time(tmp_path):
    sources = _hostile_sources(tmp_path)
    try:
        results = run_cases([(name, kind, path) for name, (kind, path, _) in sources.items()])
    finally:
        _remove_deep_tree(tmp_path / "tree-1100")
    check_refused(results, {name: needle for name, (_, _, needle) in sources.items()})
    cache = Path(os.environ["ASLQUANT_CACHE_DIR"]) / "zips"
    leftovers = [p for p in cache.rglob("*.jpg")] if cache.exists() else []
    assert not [p for p in leftovers if "x.jpg" in str(p) or "ddddd" in str(p)]


@pytest.mark.slow
def test_cli_refuses_a_two_million_folder_zip(tmp_path):
    path = tmp_path / "dirs.zip"
    path.write_bytes(directory_entries_zip(2_000_000))
    code, stderr, measured = run_cli(["--data", str(path)], tmp_path)
    check_cli_refusal(code, stderr, measured, "dirs.zip: zip lists 2000000 entries")


def test_folder_entries_count_toward_the_member_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_ZIP_MEMBERS", 6)
    path = _image_zip(tmp_path / "z.zip", {"C/": b"", "D/": b"", "E/": b""})
    with pytest.raises(InputError, match="zip lists 7 entries .files and folders.; the limit is 6"):
        load_image_set(path, ["A", "B"])


def test_scan_bomb_is_skipped_and_counted_like_a_corrupt_image(tmp_path):
    root = tmp_path / "d"
    for cls in ("A", "B"):
        (root / cls).mkdir(parents=True)
        for src in sorted((DEMO_DATA / cls).glob("*.jpg"))[:2]:
            (root / cls / src.name).write_bytes(src.read_bytes())
    (root / "A" / "bomb.jpg").write_bytes(scan_bomb_jpeg(200))
    image_set = load_image_set(root, ["A", "B"])
    skipped: list = []
    start = time.perf_counter()
    kept = [
        i.display
        for b in iter_batches(image_set.items, data.Preprocess(), 8, skipped)
        for i in b.items
    ]
    assert time.perf_counter() - start < 5
    assert "A/bomb.jpg" not in kept and len(kept) == 4
    assert skipped == [
        (
            "A/bomb.jpg",
            f"JPEG with 210 scans; at most {data.MAX_JPEG_SCANS} are decoded (each scan is another pass over the whole image)",
        )
    ]


def test_ordinary_progressive_jpegs_are_within_the_scan_budget():
    jpeg = scan_bomb_jpeg(0, side=512)
    assert jpeg.count(b"\xff\xda") <= 12  # libjpeg's progressive script: 10 scans
    assert data.open_image(jpeg, name="p.jpg").size == (512, 512)


def test_pixel_limit_does_not_depend_on_pillows_global(monkeypatch):
    big = io.BytesIO()
    Image.new("L", (7000, 6000)).save(big, "PNG")  # 42 MP, over our 40 MP, under Pillow's 89 MP
    for pillow_limit in (None, 89_478_485, 10**12):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
        start = time.perf_counter()
        with pytest.raises(InputError, match="exceeds the 40000000-pixel limit"):
            data.open_image(big.getvalue(), name="big.png")
        assert time.perf_counter() - start < 1.0


def test_only_the_first_frame_of_an_animated_image_is_decoded():
    # FRAMES_DECODED = 1: opening a 500-frame GIF or TIFF costs what one frame costs.
    frames = [Image.new("L", (64, 64), (i * 37) % 256) for i in range(500)]
    assert data.FRAMES_DECODED == 1
    for fmt, kw in (("GIF", {"duration": 10, "loop": 0}), ("TIFF", {})):
        one, many = io.BytesIO(), io.BytesIO()
        frames[0].save(one, fmt)
        frames[0].save(many, fmt, save_all=True, append_images=frames[1:], **kw)
        assert Image.open(io.BytesIO(many.getvalue())).n_frames == 500
        timings = []
        for payload in (one.getvalue(), many.getvalue()):
            start = time.perf_counter()
            for _ in range(20):
                assert data.open_image(payload, name=f"anim.{fmt.lower()}").size == (64, 64)
            timings.append(time.perf_counter() - start)
        assert timings[1] < 3 * timings[0] + 0.05, (fmt, timings)


def test_zip_cache_evicts_the_least_recently_used_extraction(tmp_path, monkeypatch):
    zips = [_image_zip(tmp_path / f"z{i}.zip", {f"A/pad{i}.jpg": DEMO_IMAGE}) for i in range(4)]
    one = sum(i.file_size for i in zipfile.ZipFile(zips[0]).infolist())
    monkeypatch.setattr(data, "MAX_ZIP_CACHE_BYTES", 2 * one + one // 2)  # room for two
    cache = Path(os.environ["ASLQUANT_CACHE_DIR"]) / "zips"

    def extracted() -> set[str]:
        return {json.loads((p / "manifest.json").read_text())["sha256"] for p in cache.iterdir()
                if (p / "manifest.json").is_file()}  # fmt: skip

    digests = [load_image_set(z, ["A", "B"]).digest for z in zips[:2]]
    assert set(digests) <= extracted()
    load_image_set(zips[0], ["A", "B"])  # z0 used again: z1 is now the oldest
    digests.append(load_image_set(zips[2], ["A", "B"]).digest)
    assert digests[1] not in extracted() and {digests[0], digests[2]} <= extracted()
    digests.append(load_image_set(zips[3], ["A", "B"]).digest)
    assert digests[0] not in extracted() and {digests[2], digests[3]} <= extracted()
    total = sum(json.loads((p / "manifest.json").read_text())["bytes"] for p in cache.iterdir()
                if (p / "manifest.json").is_file())  # fmt: skip
    assert total <= data.MAX_ZIP_CACHE_BYTES


def test_member_names_that_only_look_alike_are_not_clashes(tmp_path):
    extra = {"A/x.jpg": DEMO_IMAGE, "A/x.jpg!/y.txt": b"n", "A/x/A3.jpg": DEMO_IMAGE}
    image_set = load_image_set(_image_zip(tmp_path / "ok.zip", extra), ["A", "B"])
    assert {"A/x.jpg", "A/x/A3.jpg"} <= {i.display for i in image_set.items}
