"""Preprocessing settings, image sources and layouts, deterministic stratified sampling.

Preprocessing follows torchvision's PIL path exactly (torchvision itself has no CPU wheel here):
``Resize`` is ``Image.resize(size, BILINEAR)`` (Pillow antialiases when shrinking), the
shorter-side size is ``int(s * long / short)``, ``CenterCrop`` offsets are
``int(round((h - s) / 2.0))``, ``ToTensor`` divides by 255 and ``Normalize`` is
``(x - mean) / std`` in float32.

Image sources are untrusted: a zip's end record and central directory are checked (entry count
including folders, directory size, declared sizes, path length and depth, file/folder clashes,
traversal) before ``zipfile`` parses it or anything is written; only image members are extracted,
into a cache keyed by the zip's sha256 whose total size is capped (least recently used entries
are evicted). Folder trees are walked without recursion, to a bounded depth. Pillow may only open
a fixed list of raster formats (no EPS/Ghostscript); ``_decode`` enforces the pixel limit itself
and a decode budget (JPEG scans; only the first frame of an animated file is ever decoded), and
unusable files are skipped and reported rather than fatal.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import stat
import struct
import tempfile
import time
import warnings
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from aslquant.errors import InputError, UnreadableFile, read_regular_file
from aslquant.model import MIN_INPUT_SIZE
from aslquant.pixelcache import PIXELS, Unreadable
from aslquant.runtime import cache_root
from aslquant.zipdir import read_directory

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Largest input size. One image's float32 activations in the CustomCNN (``activation_bytes``,
#: summed over the forward pass) grow with the square of the size: 13 MB at 224, 71 MB at 512,
#: 289 MB at 1024. A 32-image batch at 1024 took 5 GB and minutes; 512 is a quarter of that.
MAX_INPUT_SIZE = 512
#: Smallest std (after float32 rounding), largest |mean|. With pixels in 0..255 these keep
#: (x - mean) / std within about 1.3e9: finite in float32, the precision the network runs in.
MIN_STD = 1e-6
MAX_ABS_MEAN = 1000.0

#: Largest image (width x height) decoded; checked by ``_decode`` itself on the header, before
#: any pixel is decoded (not through Pillow's process-wide ``Image.MAX_IMAGE_PIXELS``).
MAX_IMAGE_PIXELS: int = 40_000_000
#: Largest image file read, and smallest side an image may have to be worth classifying.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MIN_IMAGE_SIDE = 8
#: Most scans a JPEG may have. Each scan of a progressive JPEG is another pass over every
#: coefficient: a 36 MP image with 120,000 empty scans decodes for many minutes. Encoders
#: write about 10 (libjpeg's progressive script) and rarely more than 20; 64 scans of a
#: 40 MP image cost a few seconds at most. Counted on the bytes before decoding.
MAX_JPEG_SCANS = 64
#: Frames decoded per image: the first. Later frames of an animated GIF/WebP/PNG or pages of a
#: TIFF are never read, so their number costs nothing (Pillow would walk the whole file to
#: count them, which is itself the cost to avoid).
FRAMES_DECODED = 1
#: Zip limits, checked on the end record and central directory before zipfile parses it:
#: entries (files and folders), directory bytes, total declared size.
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_DIRECTORY_BYTES = 32 * 1024 * 1024
MAX_ZIP_BYTES = 2 * 1024**3
#: Member paths: levels, bytes of one component (Linux NAME_MAX) and of the whole path.
MAX_ZIP_PATH_DEPTH = 32
MAX_PATH_COMPONENT_BYTES = 255
MAX_ZIP_PATH_BYTES = 1024
#: Total size of extracted zips kept in the cache; least recently used ones are evicted to
#: make room (twice the per-zip limit, so the newest zip always fits).
MAX_ZIP_CACHE_BYTES = 2 * MAX_ZIP_BYTES
#: Most entries looked at in a folder tree, and deepest folder searched below a class folder.
MAX_FOLDER_FILES = 1_000_000
MAX_FOLDER_DEPTH = 32

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_ARCHIVE_EXTENSIONS = frozenset(
    {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".lz4", ".jar"}
)
#: Raster formats Pillow may open. Notably excludes EPS/PS (Pillow runs Ghostscript for them).
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


# ---------------------------------------------------------------------------------------------
# Preprocessing


def _triple(value: object, what: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"preprocessing: {what} must be three numbers, got {value!r}") from None
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise InputError(f"preprocessing: {what} must be three finite numbers, got {value!r}")
    return vals  # type: ignore[return-value]


def _check_mean_std(mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
    """Refuse a mean/std that is not finite and sane in float32, the network's precision."""
    with np.errstate(over="ignore", under="ignore"):
        mean32 = np.asarray(mean, dtype=np.float64).astype(np.float32)
        std32 = np.asarray(std, dtype=np.float64).astype(np.float32)
    if not np.isfinite(mean32).all() or (np.abs(mean32) > MAX_ABS_MEAN).any():
        raise InputError(
            f"preprocessing: mean {list(mean)} is outside -{MAX_ABS_MEAN:g}..{MAX_ABS_MEAN:g} "
            "(in float32, the precision the network runs in)"
        )
    if not np.isfinite(std32).all() or (std32 < MIN_STD).any():
        raise InputError(
            f"preprocessing: std {list(std)} must be finite and at least {MIN_STD:g} in float32 "
            f"(as float32 it is {[float(v) for v in std32]}); smaller values blow (x - mean) / "
            "std up past what the network can use"
        )


def activation_bytes(input_size: int) -> int:
    """float32 bytes of one image's activations in the CustomCNN: input, and each stage's
    convolution, ReLU and 2x2 max-pool outputs (what a forward pass without grad allocates)."""
    total = 3 * input_size * input_size
    side = input_size
    for channels, kernel in ((16, 5), (32, 5), (64, 3), (128, 5)):
        side = side - kernel + 1
        total += 2 * channels * side * side  # conv and ReLU outputs
        side //= 2
        total += channels * side * side  # max-pool output
    return 4 * total


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network input, with torchvision's semantics.

    ``crop=False``: ``Resize((s, s))``; ``crop=True``: ``Resize(s)`` then ``CenterCrop(s)``.
    ``scale=1`` is ``ToTensor`` (0..1); ``scale=255`` keeps 0..255. ``mean``/``std`` are applied
    after scaling, per channel of the tensor fed to the network (so in BGR order if ``bgr``).
    """

    input_size: int = 224
    crop: bool = False
    scale: int = 1
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bgr: bool = False

    def __post_init__(self) -> None:
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int):
            raise InputError(f"preprocessing: input_size must be an integer, got {size!r}")
        if size < MIN_INPUT_SIZE:
            raise InputError(
                f"preprocessing: input_size {size} is outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} "
                f"(the network needs at least {MIN_INPUT_SIZE} pixels)"
            )
        if size > MAX_INPUT_SIZE:
            mb = activation_bytes(size) / 1e6
            raise InputError(
                f"preprocessing: input_size {size} is outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} "
                f"(it needs about {mb:,.0f} MB of activations per image, {32 * mb / 1e3:,.1f} GB "
                f"for a batch of 32; {MAX_INPUT_SIZE} needs "
                f"{activation_bytes(MAX_INPUT_SIZE) / 1e6:,.0f} MB)"
            )
        for flag in ("crop", "bgr"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"preprocessing: {flag} must be true or false")
        if isinstance(self.scale, bool) or self.scale not in (1, 255):
            raise InputError(f"preprocessing: scale must be 1 or 255, got {self.scale!r}")
        if (self.mean is None) != (self.std is None):
            raise InputError("preprocessing: give both mean and std, or neither")
        if self.mean is not None:
            mean = _triple(self.mean, "mean")
            std = _triple(self.std, "std")
            _check_mean_std(mean, std)
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)

    def to_dict(self) -> dict:
        """Plain JSON-able settings (tuples become lists)."""
        d = asdict(self)
        for key in ("mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Settings from ``to_dict`` output (or a user's JSON); unknown keys are refused."""
        if not isinstance(d, dict):
            raise InputError(
                f"preprocessing: expected a mapping of options, got {type(d).__name__}"
            )
        allowed = {"input_size", "crop", "scale", "mean", "std", "bgr"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise InputError(
                f"preprocessing: unknown option(s) {unknown}; allowed: {sorted(allowed)}"
            )
        return cls(**d)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the Resize step, as torchvision computes it."""
        s = self.input_size
        if not self.crop:
            return s, s
        if width <= height:
            return s, int(s * height / width)
        return int(s * width / height), s

    def pixels(self, image: Image.Image) -> np.ndarray:
        """The geometric steps: PIL image -> uint8 array (3, s, s), resized, cropped, in the
        channel order the network is fed (what the pixel cache keeps)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        s = self.input_size
        new_w, new_h = self.resized_size(*image.size)
        # torchvision returns the image untouched when it already has the requested size.
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), Image.BILINEAR)
        if self.crop:
            top = int(round((new_h - s) / 2.0))
            left = int(round((new_w - s) / 2.0))
            image = image.crop((left, top, left + s, top + s))
        arr = np.asarray(image, dtype=np.uint8)
        if self.bgr:
            arr = arr[:, :, ::-1]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def geometry(self) -> tuple:
        """What ``pixels`` depends on (part of the pixel cache's key)."""
        return (self.input_size, self.crop, self.bgr)

    def normalize(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 pixels (3, s, s) or (N, 3, s, s) -> the float32 network input (ToTensor, Normalize)."""
        # NumPy float32 arithmetic is IEEE-identical to torch's here, and stays single-threaded
        # (torch's intra-op threads on tiny tensors cost more than the work on a busy machine).
        x = pixels.astype(np.float32)
        if self.scale == 1:
            x /= np.float32(255)
        if self.mean is not None and self.std is not None:
            shape = (3, 1, 1) if x.ndim == 3 else (1, 3, 1, 1)
            x -= np.asarray(self.mean, dtype=np.float32).reshape(shape)
            x /= np.asarray(self.std, dtype=np.float32).reshape(shape)
        return torch.from_numpy(x)

    def apply(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> float32 tensor (3, s, s)."""
        return self.normalize(self.pixels(image))

    def apply_array(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB frame (e.g. from the webcam) -> the same tensor ``apply`` gives."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
            raise InputError("frame: expected a uint8 numpy array")
        if rgb.ndim == 3 and rgb.shape[2] == 4:
            rgb = rgb[:, :, :3]
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
            raise InputError(f"frame: expected an HxWx3 RGB array, got shape {rgb.shape}")
        return self.apply(Image.fromarray(np.ascontiguousarray(rgb), "RGB"))


# ---------------------------------------------------------------------------------------------
# Opening one image


class _BadImage(Exception):
    """An image that cannot be used; the message is the reason shown to the user."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        # Pillow's own I;16 -> RGB conversion clips at 255; scale the range down instead.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = arr / 257.0
        elif mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise _BadImage(f"cannot convert image mode {mode} to RGB ({err})") from None


def _jpeg_scans(img: Image.Image, data: bytes) -> int:
    """Upper bound on the JPEG scans Pillow's decoder will run for ``img`` (0 if not JPEG).

    Counts start-of-scan markers (FF DA) in the whole file. Inside entropy-coded data every FF
    byte is followed by 00, so a real scan is always counted; an FF DA inside an APP segment
    (an EXIF thumbnail's scans) can only over-count.
    """
    jpeg_inside = img.format in ("JPEG", "MPO") or (
        img.format == "TIFF" and str(img.info.get("compression", "")).endswith("jpeg")
    )
    return data.count(b"\xff\xda") if jpeg_inside else 0


def _check_decode_budget(img: Image.Image, data: bytes) -> None:
    """Refuse, from the header and markers alone, an image whose decode would be too costly."""
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise _BadImage(f"{width}x{height} image exceeds the {MAX_IMAGE_PIXELS}-pixel limit")
    scans = _jpeg_scans(img, data)
    if scans > MAX_JPEG_SCANS:
        raise _BadImage(
            f"JPEG with {scans} scans; at most {MAX_JPEG_SCANS} are decoded (each scan is another "
            "pass over the whole image)"
        )


def _decode(data: bytes) -> Image.Image:
    """The first frame of an image as RGB, within the pixel limit and the decode budget."""
    if not data:
        raise _BadImage("empty file")
    with warnings.catch_warnings():
        # Whatever Pillow's process-wide limit is (ours, its default, or None), it must not
        # print a warning; our own check below is the one that decides.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
            _check_decode_budget(img, data)
            img.load()  # the first frame only; later frames are never sought
            if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:  # a decoder that resized on load
                raise _BadImage(f"image exceeds the {MAX_IMAGE_PIXELS}-pixel limit")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _BadImage(
                f"image declares more than the {MAX_IMAGE_PIXELS}-pixel limit (decompression bomb?)"
            ) from None
        except UnidentifiedImageError:
            raise _BadImage("not a readable image (JPEG, PNG, BMP, GIF, TIFF, WebP, PPM)") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as err:
            detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
            raise _BadImage(
                f"corrupt or truncated image ({detail or type(err).__name__})"
            ) from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001  a malformed EXIF block only costs the orientation
        pass
    width, height = img.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise _BadImage(f"image is {width}x{height}; too small (under {MIN_IMAGE_SIDE} px a side)")
    return _to_rgb(img)


def _read_image_bytes(path: Path) -> bytes:
    try:
        return read_regular_file(path, MAX_IMAGE_BYTES)
    except UnreadableFile as err:
        raise _BadImage(
            "empty file" if err.reason == "is empty" else f"file {err.reason}"
        ) from None


def open_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode an image to RGB with EXIF orientation applied; ``InputError`` if unusable."""
    label = name or ("image" if isinstance(source, (bytes, bytearray)) else str(source))
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
            if len(data) > MAX_IMAGE_BYTES:
                raise _BadImage(f"image above {MAX_IMAGE_BYTES} bytes refused")
        else:
            data = _read_image_bytes(Path(source))
        return _decode(data)
    except _BadImage as err:
        raise InputError(f"{label}: {err}") from None


# ---------------------------------------------------------------------------------------------
# Image sets


@dataclass(frozen=True)
class LabeledImage:
    """One image on disk with its class index."""

    path: str
    display: str
    label: int


@dataclass
class ImageSet:
    """Images found under a folder or zip, matched to the model's class names."""

    root: str
    layout: str
    source: str
    class_names: list[str]
    items: list[LabeledImage]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: sha256 of the zip for zip sources ("" for folders); part of the fingerprint.
    digest: str = ""

    def counts(self) -> dict[str, int]:
        """Images per class name, in class order (zeros included)."""
        counts = dict.fromkeys(self.class_names, 0)
        for item in self.items:
            counts[self.class_names[item.label]] += 1
        return counts


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _is_archive_name(name: str) -> bool:
    return Path(name).suffix.lower() in _ARCHIVE_EXTENSIONS


class _LabelIndex:
    """Case-insensitive class-name lookup (an exact-case match wins over a folded one)."""

    def __init__(self, class_names: list[str]) -> None:
        self.exact = {n: i for i, n in enumerate(class_names)}
        folded: dict[str, list[int]] = {}
        for i, n in enumerate(class_names):
            folded.setdefault(n.strip().casefold(), []).append(i)
        self.folded = {k: v[0] for k, v in folded.items() if len(v) == 1}

    def get(self, name: str) -> int | None:
        if name in self.exact:
            return self.exact[name]
        return self.folded.get(name.strip().casefold())


def _flat_class(stem: str, index: _LabelIndex) -> int | None:
    """Class of a flat file: longest matching prefix ending at a separator, digits stripped."""
    cuts = [m.start() for m in re.finditer(r"[_\-\s.]", stem)]
    prefixes = [stem] + [stem[:c] for c in reversed(cuts)]
    for prefix in prefixes:
        for cand in (prefix, re.sub(r"[_\-\s]*\d+$", "", prefix)):
            if cand:
                found = index.get(cand)
                if found is not None:
                    return found
    return None


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    names = list(class_names) if not isinstance(class_names, str) else []
    if len(names) < 2 or not all(isinstance(n, str) and n.strip() for n in names):
        raise InputError("class names: need a list of at least 2 non-empty names")
    return names


class _Walker:
    """Lists one folder tree without following symlinks out of ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.skipped: list[tuple[str, str]] = []
        self.seen = 0

    def rel(self, path: str | Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.real_root or real.startswith(self.real_root + os.sep)

    def accept_file(self, path: str, name: str) -> bool:
        """True if ``path`` is a usable image file; otherwise records why not."""
        self.seen += 1
        if self.seen > MAX_FOLDER_FILES:
            raise InputError(
                f"{self.root}: more than {MAX_FOLDER_FILES} files; pick a smaller folder"
            )
        rel = self.rel(path)
        if _hidden(name):
            self.skipped.append((rel, "hidden or system file"))
            return False
        if os.path.islink(path) and not self._inside(path):
            self.skipped.append((rel, "symlink leads outside the folder"))
            return False
        if _is_archive_name(name):
            self.skipped.append((rel, "nested archive ignored"))
            return False
        if not _is_image_name(name):
            self.skipped.append((rel, "not an image file"))
            return False
        try:
            st = os.stat(path)
        except OSError:
            self.skipped.append((rel, "unreadable or broken link"))
            return False
        if not stat.S_ISREG(st.st_mode):
            self.skipped.append((rel, "not a regular file"))
            return False
        if st.st_size == 0:
            self.skipped.append((rel, "empty file"))
            return False
        return True

    def walk(self, top: Path) -> Iterator[str]:
        """Accepted image paths under ``top``, sorted within each folder; symlinked folders are
        not followed. Iterative (a deep tree cannot exhaust the stack) and at most
        ``MAX_FOLDER_DEPTH`` levels below ``top``: a deeper folder is refused."""
        stack: list[tuple[str, int]] = [(str(top), 0)]
        while stack:
            dirpath, depth = stack.pop()
            try:
                with os.scandir(dirpath) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as err:
                self.skipped.append(
                    (self.rel(dirpath) + "/", f"unreadable folder ({err.strerror})")
                )
                continue
            subdirs: list[str] = []
            files: list[os.DirEntry] = []
            for entry in entries:
                try:
                    is_dir = entry.is_dir()  # follows symlinks, as os.walk does
                except OSError:
                    is_dir = False
                if not is_dir:
                    files.append(entry)
                elif _hidden(entry.name):
                    self.skipped.append((self.rel(entry.path) + "/", "hidden folder ignored"))
                elif entry.is_symlink():
                    self.skipped.append(
                        (self.rel(entry.path) + "/", "symlinked folder not followed")
                    )
                else:
                    subdirs.append(entry.path)
            for entry in files:
                if self.accept_file(entry.path, entry.name):
                    yield entry.path
            if subdirs and depth >= MAX_FOLDER_DEPTH:
                raise InputError(
                    f"{self.root}: folders nested more than {MAX_FOLDER_DEPTH} levels below "
                    f"{self.rel(top)}/; point at a shallower folder"
                )
            stack.extend((d, depth + 1) for d in reversed(subdirs))

    def entries(self, top: Path) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
        """(visible real subfolders, all files) directly in ``top``."""
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
        dirs = [e for e in entries if e.is_dir(follow_symlinks=False) and not _hidden(e.name)]
        files = [e for e in entries if not e.is_dir(follow_symlinks=True)]
        for e in entries:
            if e.is_symlink() and e.is_dir(follow_symlinks=True):
                self.skipped.append((self.rel(e.path) + "/", "symlinked folder not followed"))
        return dirs, files


def _scan_folder(root: Path, class_names: list[str], label: str) -> tuple[str, Path, list, list]:
    """Work out the layout under ``root``; returns (layout, base, [(abs, label)], skipped)."""
    index = _LabelIndex(class_names)
    walker = _Walker(root)
    base = root
    # Descend through wrapper folders (Kaggle: asl_alphabet_train/asl_alphabet_train/A/...).
    for _ in range(10):
        dirs, files = walker.entries(base)
        images = [f for f in files if _is_image_name(f.name) and not _hidden(f.name)]
        if len(dirs) == 1 and not images and index.get(dirs[0].name) is None:
            base = Path(dirs[0].path)
        else:
            break
    dirs, files = walker.entries(base)
    matched = [(d, index.get(d.name)) for d in dirs]
    found: list[tuple[str, int]] = []
    if any(i is not None for _, i in matched):
        layout = "imagefolder"
        for entry in files:
            if walker.accept_file(entry.path, entry.name):
                walker.skipped.append((walker.rel(entry.path), "not inside a class folder"))
        for d, i in matched:
            if i is None:
                walker.skipped.append((walker.rel(d.path) + "/", "folder matches no class label"))
                continue
            found.extend((p, i) for p in walker.walk(Path(d.path)))
    else:
        layout = "flat"
        candidates = [f for f in files if walker.accept_file(f.path, f.name)]
        if not candidates:
            if dirs:
                shown = [d.name for d in dirs[:12]]
                more = " ..." if len(class_names) > 12 else ""
                hint = " (wrapper folders? point at the one holding the class folders)"
                raise InputError(
                    f"{label}: class folders do not match the labels: folders {shown} vs "
                    f"labels {class_names[:12]}{more}{hint if len(dirs) > 1 else ''}"
                )
            raise InputError(f"{label}: no images found")
        for d in dirs:
            walker.skipped.append((walker.rel(d.path) + "/", "folder matches no class label"))
        for f in candidates:
            i = _flat_class(Path(f.name).stem, index)
            if i is None:
                walker.skipped.append((walker.rel(f.path), "file name matches no class label"))
            else:
                found.append((f.path, i))
    return layout, base, found, walker.skipped


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (cache keys everywhere use this)."""
    h = hashlib.sha256()
    path = Path(path)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_member(name: str, label: str) -> PurePosixPath:
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or ".." in parts or "\x00" in norm:
        raise InputError(
            f"{label}: unsafe zip member {name!r} (path traversal); refusing to extract"
        )
    return PurePosixPath(*[p for p in parts if p not in ("", ".")])


def _check_member_path(rel: PurePosixPath, name: str, label: str) -> None:
    """Refuse a member path this file system cannot hold or that nests absurdly deep."""
    if len(rel.parts) > MAX_ZIP_PATH_DEPTH:
        raise InputError(
            f"{label}: zip member {name[:80]!r}... is {len(rel.parts)} levels deep; "
            f"the limit is {MAX_ZIP_PATH_DEPTH}"
        )
    for part in rel.parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_PATH_COMPONENT_BYTES:
            raise InputError(
                f"{label}: zip member {name[:80]!r}... has a {len(part)}-character name "
                f"component; the limit is {MAX_PATH_COMPONENT_BYTES} bytes"
            )
    size = len(rel.as_posix().encode("utf-8", "surrogatepass"))
    if size > MAX_ZIP_PATH_BYTES:
        raise InputError(
            f"{label}: zip member path {name[:80]!r}... is {size} bytes; "
            f"the limit is {MAX_ZIP_PATH_BYTES}"
        )


def _check_zip_directory(path: Path, label: str) -> int:
    """Check a zip's directory before ``zipfile`` parses it; returns its entry count.

    Entries (files and folders) and directory bytes are bounded on the end record, then while
    walking the directory; then the total declared size, every member path (traversal, depth,
    component and path length) and clashes between a file and a folder of the same name.
    """
    try:
        with path.open("rb") as fh:
            _, entries = read_directory(
                fh, label, max_entries=MAX_ZIP_MEMBERS, max_directory_bytes=MAX_ZIP_DIRECTORY_BYTES
            )
    except OSError as err:
        raise InputError(f"{label}: cannot read the zip ({err.strerror or err})") from None
    total = sum(e.size for e in entries if not e.is_dir)
    if total > MAX_ZIP_BYTES:
        raise InputError(
            f"{label}: zip expands to {total} bytes; the limit is {MAX_ZIP_BYTES} bytes"
        )
    # Each member as its parts joined by NUL (never in a checked name): sorted, everything
    # below a path follows that path directly, so a file that is also a folder is adjacent
    # to its first child. One string per member, whatever the depth.
    keys: list[tuple[str, bool]] = []
    for entry in entries:
        rel = _safe_member(entry.name, label)
        _check_member_path(rel, entry.name, label)
        if rel.parts:
            keys.append(("\x00".join(rel.parts), entry.is_dir))
    keys.sort()
    for (a, a_dir), (b, b_dir) in itertools.pairwise(keys):
        if (a == b and a_dir != b_dir) or (not a_dir and b.startswith(a + "\x00")):
            shown = a.replace("\x00", "/")
            raise InputError(
                f"{label}: zip member {shown!r} is both a file and a folder; refusing to extract"
            )
    return len(entries)


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` without recursion (pathlib's and os.makedirs recurse once per level)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)


def _tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (iterative; for entries without a size)."""
    total, stack = 0, [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def _touch(manifest: Path) -> None:
    """Mark a cache entry as used now, with the clock's full resolution (file timestamps set
    implicitly come from a coarse kernel clock, so two entries could tie)."""
    now = time.time_ns()
    os.utime(manifest, ns=(now, now))


def _cached_zips(zips: Path) -> list[tuple[int, int, Path]]:
    """(last use, bytes, folder) of every complete cache entry, least recently used first."""
    found = []
    try:
        children = list(os.scandir(zips))
    except OSError:
        return []
    for child in children:
        manifest = Path(child.path) / "manifest.json"
        try:
            used = manifest.stat().st_mtime_ns
        except OSError:
            continue  # an extraction in progress, or not ours
        try:
            size = int(json.loads(manifest.read_text())["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            size = _tree_bytes(Path(child.path))
        found.append((used, size, Path(child.path)))
    return sorted(found)


def _make_room(zips: Path, needed: int, label: str) -> None:
    """Evict least recently used extracted zips until ``needed`` more bytes fit the cap."""
    if needed > MAX_ZIP_CACHE_BYTES:
        raise InputError(
            f"{label}: zip expands to {needed} bytes; the zip cache holds at most "
            f"{MAX_ZIP_CACHE_BYTES} bytes"
        )
    entries = _cached_zips(zips)
    used = sum(size for _, size, _ in entries)
    for _, size, folder in entries:
        if used + needed <= MAX_ZIP_CACHE_BYTES:
            break
        shutil.rmtree(folder, ignore_errors=True)
        used -= size


def _extract_zip(path: Path, label: str) -> tuple[Path, str, list[tuple[str, str]]]:
    """Extract image members of a zip into the cache; returns (files root, sha256, skipped)."""
    digest = sha256_file(path)
    home = cache_root() / "zips" / digest[:32]
    manifest = home / "manifest.json"
    if manifest.is_file():
        try:
            meta = json.loads(manifest.read_text())
            if meta.get("sha256") == digest:
                try:
                    _touch(manifest)  # most recently used: evicted last
                except OSError:
                    pass  # a read-only cache still serves; it just cannot reorder
                return home / "files", digest, [tuple(s) for s in meta["skipped"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt below
    count = _check_zip_directory(path, label)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as err:
        raise InputError(f"{label}: not a valid zip archive ({err})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) != count:  # not the directory that was checked
            raise InputError(f"{label}: not a valid zip archive (inconsistent directory)")
        # Validate every name before writing anything, so a hostile zip leaves no trace.
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        skipped: list[tuple[str, str]] = []
        seen: set[PurePosixPath] = set()
        for info in infos:
            rel = _safe_member(info.filename, label)
            if info.is_dir() or not rel.parts:
                continue
            shown = rel.as_posix()
            mode = info.external_attr >> 16
            if any(_hidden(p) for p in rel.parts):
                skipped.append((shown, "hidden or system file"))
            elif stat.S_ISLNK(mode):
                skipped.append((shown, "symlink in archive ignored"))
            elif info.flag_bits & 0x1:
                skipped.append((shown, "encrypted member ignored"))
            elif _is_archive_name(rel.name):
                skipped.append((shown, "nested archive ignored"))
            elif not _is_image_name(rel.name):
                skipped.append((shown, "not an image file"))
            elif rel in seen:
                skipped.append((shown, "duplicate member ignored"))
            else:
                seen.add(rel)
                plan.append((info, rel))
        _make_dirs(home.parent)
        _make_room(home.parent, sum(info.file_size for info, _ in plan), label)
        tmp = Path(tempfile.mkdtemp(prefix=digest[:12] + ".", dir=home.parent))
        try:
            written = _copy_members(zf, plan, (tmp / "files").resolve(), label, skipped)
            (tmp / "manifest.json").write_text(
                json.dumps({"sha256": digest, "skipped": skipped, "bytes": written})
            )
            _touch(tmp / "manifest.json")
            if home.exists():
                shutil.rmtree(home, ignore_errors=True)
            try:
                os.replace(tmp, home)
            except OSError:
                if not manifest.is_file():  # lost a race with another extractor: theirs is fine
                    raise
        except OSError as err:
            raise InputError(
                f"{label}: cannot extract into the cache ({err.strerror or err})"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return home / "files", digest, skipped


def _copy_members(
    zf: zipfile.ZipFile,
    plan: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    out_root: Path,
    label: str,
    skipped: list[tuple[str, str]],
) -> int:
    """Copy the planned members under ``out_root``, each within its declared size; returns
    the bytes written. Unreadable members are skipped (and noted), not fatal."""
    out_root.mkdir()
    written = 0
    for info, rel in plan:
        target = (out_root / rel).resolve()
        if not target.is_relative_to(out_root):  # defence in depth; names were checked
            raise InputError(f"{label}: unsafe zip member {info.filename!r}; refusing")
        _make_dirs(target.parent)
        size = 0
        try:
            with zf.open(info) as src, target.open("wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    size += len(chunk)
                    written += len(chunk)
                    if size > info.file_size or written > MAX_ZIP_BYTES:
                        raise InputError(
                            f"{label}: member {info.filename!r} expands beyond its "
                            f"declared size or the {MAX_ZIP_BYTES}-byte limit"
                        )
                    dst.write(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as err:
            target.unlink(missing_ok=True)
            written -= size
            skipped.append((rel.as_posix(), f"corrupt zip member ({err})"))
    return written


def load_image_set(source: str | Path, class_names: list[str]) -> ImageSet:
    """Find labelled images in a folder or zip (ImageFolder, Kaggle ASL or flat ``A_test.jpg``)."""
    names = _check_class_names(class_names)
    label = str(source)
    path = Path(source)
    digest = ""
    skipped: list[tuple[str, str]] = []
    try:
        if not path.exists():
            raise InputError(f"{label}: folder or zip not found")
        if path.is_dir():
            root = path.resolve()
        elif path.is_file():
            if not zipfile.is_zipfile(path):
                if path.suffix.lower() == ".zip":
                    raise InputError(f"{label}: not a valid zip archive")
                raise InputError(f"{label}: not a folder or a .zip archive")
            root, digest, skipped = _extract_zip(path, label)
            skipped = list(skipped)
        else:
            raise InputError(f"{label}: not a folder or a .zip archive")
        layout, base, found, more_skipped = _scan_folder(root, names, label)
    except OSError as err:  # a path too long, a folder we may not list, ...
        raise InputError(f"{label}: cannot be read ({err.strerror or err})") from None
    skipped.extend(more_skipped)
    items = sorted(
        (
            LabeledImage(
                path=os.path.abspath(p), display=Path(os.path.relpath(p, root)).as_posix(), label=i
            )
            for p, i in found
        ),
        key=lambda it: it.display,
    )
    if not items:
        raise InputError(f"{label}: no images matching the class labels found")
    classes = sorted({it.label for it in items})
    if len(classes) < 2:
        raise InputError(
            f"{label}: images found for only one class ({names[classes[0]]!r}); need at least 2"
        )
    return ImageSet(
        root=str(root),
        layout=layout,
        source=str(path.resolve()),
        class_names=names,
        items=items,
        skipped=sorted(set(skipped)),
        digest=digest,
    )


def dataset_fingerprint(image_set: ImageSet) -> str:
    """sha256 over class names, layout and each (display, label, size, mtime or zip digest)."""
    h = hashlib.sha256()
    h.update(json.dumps([image_set.class_names, image_set.layout, image_set.digest]).encode())
    for item in sorted(image_set.items, key=lambda it: it.display):
        st = os.stat(item.path)
        # Zip members are re-extracted with new mtimes; the zip's own digest covers content.
        stamp = 0 if image_set.digest else st.st_mtime_ns
        h.update(f"\n{item.display}\t{item.label}\t{st.st_size}\t{stamp}".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Sampling


def _round_robin(queues: list[deque], n: float) -> list[LabeledImage]:
    out: list[LabeledImage] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.popleft())
    return out


def _check_count(value: int | None, what: str, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{what} must be a whole number >= 0, got {value!r}")


def stratified_split(
    items: list[LabeledImage], n_calib: int, n_eval: int | None, seed: int
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Disjoint (calibration, evaluation) sets, class-balanced, deterministic for ``seed``.

    Each class is sorted then shuffled with its own seeded RNG (so listing order and other
    classes do not matter); images are then dealt round-robin over a seeded class order.
    ``n_eval=None`` takes all the rest. Asking for more than exists returns what exists.
    """
    _check_count(n_calib, "calibration size", False)
    _check_count(n_eval, "evaluation size", True)
    groups: dict[int, list[LabeledImage]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    queues = []
    order = sorted(groups)
    random.Random(f"{seed}:classes").shuffle(order)
    for lab in order:
        group = sorted(set(groups[lab]), key=lambda it: (it.display, it.path))
        random.Random(f"{seed}:{lab}").shuffle(group)
        queues.append(deque(group))
    calib = _round_robin(queues, n_calib)
    evaluation = _round_robin(queues, math.inf if n_eval is None else n_eval)
    return calib, evaluation


def sample(items: list[LabeledImage], n: int | None, seed: int) -> list[LabeledImage]:
    """A class-stratified, seeded sample of ``n`` items (all of them, reordered, if None)."""
    _check_count(n, "sample size", True)
    return stratified_split(items, len(items) if n is None else n, 0, seed)[0]


# ---------------------------------------------------------------------------------------------
# Tensors


@dataclass
class Batch:
    """A stack of preprocessed images, their labels and where they came from."""

    x: torch.Tensor
    y: torch.Tensor
    items: list[LabeledImage]


def _pixels(item: LabeledImage, pp: Preprocess) -> np.ndarray:
    """uint8 pixels of one item, decoded once per geometry (``aslquant.pixelcache``);
    raises ``_BadImage`` with the reason (also remembered)."""
    try:
        st = os.stat(item.path)
        key = (item.path, st.st_size, st.st_mtime_ns, pp.geometry())
    except OSError as err:
        raise _BadImage(f"cannot read file ({err.strerror or err})") from None
    cached = PIXELS.get(key)
    if isinstance(cached, Unreadable):
        raise _BadImage(str(cached))
    if cached is not None:
        return cached
    try:
        pixels = pp.pixels(_decode(_read_image_bytes(Path(item.path))))
    except _BadImage as err:
        PIXELS.put(key, Unreadable(str(err)))
        raise
    PIXELS.put(key, pixels)
    return pixels


def _batch(pixels: list[np.ndarray], kept: list[LabeledImage], pp: Preprocess) -> Batch:
    # One normalization over the stacked uint8 batch (cheaper than per image).
    x = pp.normalize(np.stack(pixels))
    return Batch(x, torch.tensor([i.label for i in kept], dtype=torch.long), kept)


def iter_batches(
    items: list[LabeledImage],
    pp: Preprocess,
    batch_size: int = 32,
    skipped: list | None = None,
) -> Iterator[Batch]:
    """Stream batches; unreadable images are left out and appended to ``skipped``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    xs: list[np.ndarray] = []
    kept: list[LabeledImage] = []
    for item in items:
        try:
            xs.append(_pixels(item, pp))
        except _BadImage as err:
            if skipped is not None:
                skipped.append((item.display, str(err)))
            continue
        kept.append(item)
        if len(kept) == batch_size:
            yield _batch(xs, kept, pp)
            xs, kept = [], []
    if kept:
        yield _batch(xs, kept, pp)


def load_tensors(items: list[LabeledImage], pp: Preprocess, skipped: list | None = None) -> Batch:
    """All items as one batch (for small sets such as calibration)."""
    batches = list(iter_batches(items, pp, batch_size=max(1, len(items)), skipped=skipped))
    if not batches:
        s = pp.input_size
        return Batch(torch.empty(0, 3, s, s), torch.empty(0, dtype=torch.long), [])
    return batches[0]
