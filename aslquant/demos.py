"""The demo models shipped in ``sample_data/``, described once in ``sample_data/demos.json``.

Each demo is a checkpoint, its labels, the images it is measured on, the preprocessing it was
trained with, and one line saying what it was trained on (shown on the Predict page, so a
stakeholder holding a real hand up to the webcam knows why a demo trained on renders guesses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aslquant.data import Preprocess

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"
MANIFEST = SAMPLE_DATA / "demos.json"
#: The demo the dashboard and the CLI start on.
DEFAULT_DEMO = "robust"


@dataclass(frozen=True)
class Demo:
    """One shipped demo: files (absolute paths), preprocessing and provenance."""

    name: str
    title: str
    checkpoint: Path
    labels: Path
    data: Path
    preprocess: Preprocess
    trained_on: str


@cache
def demos() -> dict[str, Demo]:
    """Every demo in the manifest, by name, in manifest order."""
    raw = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return {
        name: Demo(
            name=name,
            title=entry["title"],
            checkpoint=SAMPLE_DATA / entry["checkpoint"],
            labels=SAMPLE_DATA / entry["labels"],
            data=SAMPLE_DATA / entry["data"],
            preprocess=Preprocess.from_dict(entry["preprocess"]),
            trained_on=entry["trained_on"],
        )
        for name, entry in raw.items()
    }


def default_demo() -> Demo:
    return demos()[DEFAULT_DEMO]


def trained_on(checkpoint: str | Path) -> str | None:
    """What a shipped demo checkpoint was trained on; None for any other file."""
    resolved = Path(checkpoint).resolve()
    for demo in demos().values():
        if demo.checkpoint.resolve() == resolved:
            return demo.trained_on
    return None
