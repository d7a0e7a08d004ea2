"""Snapshots in the user's own conditions: saved through the safe loader in the ImageFolder
layout, downloadable as a zip every loader reads, and checked with both models of a run."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from aslquant import own_images
from aslquant.data import Preprocess, load_image_set, open_image
from aslquant.errors import InputError
from aslquant.labels import load_labels
from aslquant.predict import ModelPair, predict_pair
from aslquant.recipe import QuantRecipe
from aslquant.run import DEMO_DATA, DEMO_LABELS, RunConfig, execute

NAMES = load_labels(DEMO_LABELS)


def _demo_bytes(name: str, index: int = 0) -> bytes:
    return sorted((Path(DEMO_DATA) / name).glob("*.jpg"))[index].read_bytes()


def test_snapshots_are_saved_per_class_numbered_and_counted(tmp_path):
    first = own_images.add_snapshot(tmp_path, NAMES, "B", _demo_bytes("B"))
    second = own_images.add_snapshot(tmp_path, NAMES, "B", _demo_bytes("B", 1))
    third = own_images.add_snapshot(tmp_path, NAMES, "space", _demo_bytes("space"))
    assert [p.relative_to(tmp_path).as_posix() for p in (first, second, third)] == [
        "B/B_0001.jpg",
        "B/B_0002.jpg",
        "space/space_0001.jpg",
    ]
    assert own_images.snapshot_counts(tmp_path, NAMES) == {"B": 2, "space": 1}
    own_images.remove_snapshot(first, tmp_path)
    assert own_images.snapshot_counts(tmp_path, NAMES) == {"B": 1, "space": 1}
    # Numbering continues after the highest kept number: nothing is overwritten.
    assert own_images.add_snapshot(tmp_path, NAMES, "B", _demo_bytes("B")).name == "B_0003.jpg"


def test_bad_snapshots_and_labels_are_refused_in_one_line(tmp_path):
    with pytest.raises(InputError, match="not one of the model's classes"):
        own_images.add_snapshot(tmp_path, NAMES, "AA", _demo_bytes("A"))
    with pytest.raises(InputError) as err:
        own_images.add_snapshot(tmp_path, NAMES, "A", b"<script>not an image</script>")
    assert "\n" not in str(err.value)
    # A class name from a labels file that is not a plain folder name is never a path.
    with pytest.raises(InputError, match="cannot be a folder name"):
        own_images.add_snapshot(tmp_path, ["A", "../escape"], "../escape", _demo_bytes("A"))
    assert not (tmp_path.parent / "escape").exists()
    outside = tmp_path.parent / "outside.jpg"
    outside.write_bytes(_demo_bytes("A"))
    with pytest.raises(InputError, match="not a snapshot of this set"):
        own_images.remove_snapshot(outside, tmp_path)
    assert outside.exists()
    assert own_images.snapshot_paths(tmp_path) == []


def test_the_zip_is_an_image_folder_the_loaders_read(tmp_path):
    root = tmp_path / "set"
    for name in ("A", "B", "nothing"):
        for i in range(2):
            own_images.add_snapshot(root, NAMES, name, _demo_bytes(name, i))
    data = own_images.image_folder_zip(root)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"{n}/{n}_{i:04d}.jpg" for n in ("A", "B", "nothing") for i in (1, 2)
        )
    path = tmp_path / "mine.zip"
    path.write_bytes(data)
    loaded = load_image_set(str(path), list(NAMES))
    assert {k: v for k, v in loaded.counts().items() if v} == {"A": 2, "B": 2, "nothing": 2}


@pytest.mark.slow
def test_check_runs_both_models_on_the_snapshots(tmp_path):
    config = RunConfig(
        eval_images=58,
        preprocess=Preprocess(input_size=96),
        recipe=QuantRecipe(calib_images=16),
        threads=1,
    )
    result = execute(config, timed=False)
    root = tmp_path / "set"
    for name in NAMES[:10]:
        for i in range(3):
            own_images.add_snapshot(root, NAMES, name, _demo_bytes(name, -1 - i))
    check = own_images.check_own_images(result, root)
    assert check.n == 30 and check.counts == {n: 3 for n in NAMES[:10]}
    u = check.summary
    assert 0 <= u.int8_accuracy.low <= u.int8_accuracy.estimate <= u.int8_accuracy.high <= 1
    # The changed answers are exactly the disagreements the agreement counts.
    assert len(check.changed) == round((1 - u.agreement.estimate) * check.n)
    assert all(f != q for _, _, f, q in check.changed)
    # Each FP32 answer is the run's FP32 model on that snapshot (decoded the run's way).
    expected = []
    pair = ModelPair.from_result(result)
    for path in own_images.snapshot_paths(root):
        expected.append(predict_pair(pair, open_image(path)).fp32[0][0] == path.parent.name)
    assert u.fp32_accuracy.estimate == pytest.approx(np.mean(expected))
    assert check.test_drop == result.uncertainty.drop
    with pytest.raises(InputError, match="no snapshots yet"):
        own_images.check_own_images(result, tmp_path / "empty")
