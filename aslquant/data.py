"""Preprocessing settings, image sources and layouts, deterministic stratified sampling.

Preprocessing follows torchvision's PIL path exactly (torchvision itself has no CPU wheel here):
``Resize`` is ``Image.resize(size, BILINEAR)`` (Pillow antialiases when shrinking), the
shorter-side size is ``int(s * long / short)``, ``CenterCrop`` offsets are
``int(round((h - s) / 2.0))``, ``ToTensor`` divides by 255 and ``Normalize`` is
``(x - mean) / std`` in float32.

Image sources are untrusted: zips are checked for path traversal and size/count limits before
anything is written, only image members are extracted (into a cache keyed by the zip's sha256),
Pillow may only open a fixed list of raster formats (no EPS/Ghostscript), its decompression-bomb
limit is set here on purpose, and corrupt files are skipped and reported rather than fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from aslquant.errors import InputError
from aslquant.model import MIN_INPUT_SIZE
from aslquant.pixelcache import PIXELS, Unreadable

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MAX_INPUT_SIZE = 1024

#: Largest image (width x height) decoded. Pillow warns above its limit and fails above twice
#: it; we set its limit to ours and turn the warning into an error, so the limit is exact.
MAX_IMAGE_PIXELS: int = 40_000_000
#: Largest image file read, and smallest side an image may have to be worth classifying.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MIN_IMAGE_SIDE = 8
#: Zip limits (checked on the central directory before extraction, and again while copying).
MAX_ZIP_FILES = 200_000
MAX_ZIP_BYTES = 2 * 1024**3
#: Most entries looked at in a folder tree.
MAX_FOLDER_FILES = 1_000_000

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
    except (TypeError, ValueError):
        raise InputError(f"preprocessing: {what} must be three numbers, got {value!r}") from None
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise InputError(f"preprocessing: {what} must be three finite numbers, got {value!r}")
    return vals  # type: ignore[return-value]


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
        if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
            raise InputError(
                f"preprocessing: input_size {size} is outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} "
                f"(the network needs at least {MIN_INPUT_SIZE} pixels)"
            )
        for flag in ("crop", "bgr"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"preprocessing: {flag} must be true or false")
        if isinstance(self.scale, bool) or self.scale not in (1, 255):
            raise InputError(f"preprocessing: scale must be 1 or 255, got {self.scale!r}")
        if (self.mean is None) != (self.std is None):
            raise InputError("preprocessing: give both mean and std, or neither")
        if self.mean is not None:
            object.__setattr__(self, "mean", _triple(self.mean, "mean"))
            std = _triple(self.std, "std")
            if any(v == 0 for v in std):
                raise InputError(f"preprocessing: std must be nonzero, got {std}")
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


def _decode(data: bytes) -> Image.Image:
    if not data:
        raise _BadImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _BadImage(
                    f"{width}x{height} image exceeds the {MAX_IMAGE_PIXELS}-pixel limit"
                )
            img.load()
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
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise _BadImage(f"file is {size} bytes; images above {MAX_IMAGE_BYTES} are refused")
        return path.read_bytes()
    except OSError as err:
        raise _BadImage(f"cannot read file ({err.strerror or err})") from None


def open_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode an image to RGB with EXIF orientation applied; ``InputError`` if unusable."""
    label = name or ("image" if isinstance(source, (bytes, bytearray)) else str(source))
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
            if len(data) > MAX_IMAGE_BYTES:
                raise _BadImage(f"image above {MAX_IMAGE_BYTES} bytes refused")
        else:
            path = Path(source)
            if not path.is_file():
                raise _BadImage("file not found")
            data = _read_image_bytes(path)
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
        """Accepted image paths under ``top`` (recursive, sorted, symlinked folders not followed)."""
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            keep = []
            for d in sorted(dirnames):
                full = os.path.join(dirpath, d)
                if _hidden(d):
                    self.skipped.append((self.rel(full) + "/", "hidden folder ignored"))
                elif os.path.islink(full):
                    self.skipped.append((self.rel(full) + "/", "symlinked folder not followed"))
                else:
                    keep.append(d)
            dirnames[:] = keep
            for f in sorted(filenames):
                full = os.path.join(dirpath, f)
                if self.accept_file(full, f):
                    yield full

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


def _cache_root() -> Path:
    env = os.environ.get("ASLQUANT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "aslquant"


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


def _extract_zip(path: Path, label: str) -> tuple[Path, str, list[tuple[str, str]]]:
    """Extract image members of a zip into the cache; returns (files root, sha256, skipped)."""
    digest = sha256_file(path)
    home = _cache_root() / "zips" / digest[:32]
    manifest = home / "manifest.json"
    if manifest.is_file():
        try:
            meta = json.loads(manifest.read_text())
            if meta.get("sha256") == digest:
                return home / "files", digest, [tuple(s) for s in meta["skipped"]]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt below
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{label}: not a valid zip archive ({err})") from None
    with zf:
        infos = zf.infolist()
        files = [i for i in infos if not i.is_dir()]
        if len(files) > MAX_ZIP_FILES:
            raise InputError(f"{label}: zip has {len(files)} files; the limit is {MAX_ZIP_FILES}")
        total = sum(i.file_size for i in files)
        if total > MAX_ZIP_BYTES:
            raise InputError(
                f"{label}: zip expands to {total} bytes; the limit is {MAX_ZIP_BYTES} bytes"
            )
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
        home.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=digest[:12] + ".", dir=home.parent))
        try:
            out_root = (tmp / "files").resolve()
            out_root.mkdir()
            written = 0
            for info, rel in plan:
                target = (out_root / rel).resolve()
                if not target.is_relative_to(out_root):  # defence in depth; names were checked
                    raise InputError(f"{label}: unsafe zip member {info.filename!r}; refusing")
                target.parent.mkdir(parents=True, exist_ok=True)
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
                    skipped.append((rel.as_posix(), f"corrupt zip member ({err})"))
            (tmp / "manifest.json").write_text(json.dumps({"sha256": digest, "skipped": skipped}))
            if home.exists():
                shutil.rmtree(home, ignore_errors=True)
            try:
                os.replace(tmp, home)
            except OSError:
                if not manifest.is_file():  # lost a race with another extractor: theirs is fine
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return home / "files", digest, skipped


def load_image_set(source: str | Path, class_names: list[str]) -> ImageSet:
    """Find labelled images in a folder or zip (ImageFolder, Kaggle ASL or flat ``A_test.jpg``)."""
    names = _check_class_names(class_names)
    label = str(source)
    path = Path(source)
    digest = ""
    skipped: list[tuple[str, str]] = []
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
