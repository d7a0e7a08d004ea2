"""Images taken in the user's own conditions: labelled camera snapshots become an evaluation set.

A dataset photo is not what the model will see. On the Predict page a user picks a letter and
takes snapshots with their own camera, light and background; each snapshot is saved (decoded
by the safe loader, re-encoded as a plain JPEG) into ``root/<class>/``, the ImageFolder layout
every loader here reads. The set downloads as a zip in that layout, and one call runs the run's
FP32 and quantized models on it: accuracy, drop and agreement with their intervals, McNemar,
and the images whose answer changed.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aslquant import data as data_mod
from aslquant import stats
from aslquant.errors import InputError
from aslquant.measure import evaluate_pair
from aslquant.run import RunResult

#: At most this many snapshots in one set (each is a small JPEG; the check decodes them all).
MAX_SNAPSHOTS = 2_000
#: Snapshots are stored at most this big on their longer side (a camera frame is ~640x480).
MAX_SIDE = 1_024
JPEG_QUALITY = 95


@dataclass(frozen=True)
class OwnImagesCheck:
    """The run's FP32 and quantized models on the user's snapshots."""

    n: int
    counts: dict[str, int]
    summary: stats.PairSummary
    #: Images whose quantized answer differs from FP32's: (file, true, FP32, quantized).
    changed: tuple[tuple[str, str, str, str], ...]
    #: The run's own drop on its test images, to compare with (points).
    test_drop: stats.Interval
    skipped: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "counts": dict(self.counts),
            "uncertainty": self.summary.to_dict(),
            "changed": [
                {"image": a, "true": b, "fp32": c, "int8": d} for a, b, c, d in self.changed
            ],
            "test_drop": self.test_drop.to_dict(),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def _class_dir(root: Path, class_names: tuple[str, ...] | list[str], label: str) -> Path:
    if label not in class_names:
        raise InputError(f"snapshot label {label!r} is not one of the model's classes")
    # Class names come from a labels file: a name that is not a plain folder name is refused
    # rather than written as a path.
    if label in (".", "..") or "/" in label or "\\" in label or "\0" in label:
        raise InputError(f"snapshot label {label!r} cannot be a folder name")
    return root / label


def snapshot_paths(root: str | Path) -> list[Path]:
    """Every saved snapshot under ``root``, in class then file order."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*.jpg") if p.is_file())


def snapshot_counts(root: str | Path, class_names: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Snapshots per class (classes without any left out), in class order."""
    counts = dict.fromkeys(class_names, 0)
    for path in snapshot_paths(root):
        if path.parent.name in counts:
            counts[path.parent.name] += 1
    return {name: n for name, n in counts.items() if n}


def add_snapshot(
    root: str | Path, class_names: tuple[str, ...] | list[str], label: str, image_bytes: bytes
) -> Path:
    """Save one labelled snapshot as ``root/<label>/<label>_<n>.jpg``; its path.

    The bytes are decoded by the same bounded loader as every image (a bad or hostile file is
    refused with one line) and re-encoded, so nothing but pixels is kept.
    """
    root = Path(root)
    folder = _class_dir(root, class_names, label)
    if len(snapshot_paths(root)) >= MAX_SNAPSHOTS:
        raise InputError(f"at most {MAX_SNAPSHOTS} snapshots per set: download or clear this one")
    image = data_mod.open_image(image_bytes, "snapshot")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(p.stem.rsplit("_", 1)[-1]) for p in folder.glob(f"{label}_*.jpg")
             if p.stem.rsplit("_", 1)[-1].isdigit()]  # fmt: skip
    path = folder / f"{label}_{max(taken, default=0) + 1:04d}.jpg"
    tmp = path.with_suffix(".part")
    image.save(tmp, "JPEG", quality=JPEG_QUALITY)
    tmp.replace(path)
    return path


def remove_snapshot(path: str | Path, root: str | Path) -> None:
    """Delete one snapshot of the set under ``root`` (nothing outside it)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    if root not in path.parents or path.suffix != ".jpg":
        raise InputError(f"{path}: not a snapshot of this set")
    path.unlink(missing_ok=True)


def image_folder_zip(root: str | Path) -> bytes:
    """The set as a zip in the ImageFolder layout (``<class>/<file>.jpg``)."""
    root = Path(root)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in snapshot_paths(root):
            archive.write(path, f"{path.parent.name}/{path.name}")
    return buffer.getvalue()


def check_own_images(result: RunResult, root: str | Path) -> OwnImagesCheck:
    """The run's FP32 and quantized models on the snapshots under ``root``."""
    names = list(result.class_names)
    if not snapshot_paths(root):
        raise InputError("no snapshots yet: pick a letter and take at least one")
    image_set = data_mod.load_image_set(str(root), names)
    skipped: list = list(image_set.skipped)
    batches = data_mod.iter_batches(image_set.items, result.config.preprocess, skipped=skipped)
    ev = evaluate_pair(
        result.fp32_model,
        result.quantized.module,
        result.quantized.backend,
        batches,
        total=len(image_set.items),
        threads=result.config.threads,
    )
    y = np.asarray(ev.labels)
    f, q = ev.fp32.top1, ev.quant.top1
    changed = tuple(
        (ev.displays[i], names[y[i]], names[f[i]], names[q[i]])
        for i in range(len(y))
        if f[i] != q[i]
    )
    return OwnImagesCheck(
        n=len(y),
        counts=snapshot_counts(root, names),
        summary=stats.pair_summary(y, f, q),
        changed=changed,
        test_drop=result.uncertainty.drop,
        skipped=tuple((str(p), str(r)) for p, r in skipped),
    )
