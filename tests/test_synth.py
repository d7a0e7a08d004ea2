"""The synthetic ASL generator, the shipped sample_data/ and the demo checkpoint."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aslquant.model import LAYER_NAMES, CustomCNN, load_checkpoint
from aslquant.synth import (
    CLASS_NAMES,
    generate_dataset,
    image_rng,
    render,
    render_bytes,
    silhouette,
    synth_main,
)

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
IMAGES = SAMPLE / "images"
SAMPLE_SEED = 2026  # documented in sample_data/README.md


def test_class_names_are_the_sorted_kaggle_29():
    assert len(CLASS_NAMES) == 29
    assert list(CLASS_NAMES) == sorted(CLASS_NAMES)
    assert CLASS_NAMES[:3] == ("A", "B", "C") and CLASS_NAMES[-3:] == ("del", "nothing", "space")


def test_sample_layout_counts_and_format():
    folders = sorted(p.name for p in IMAGES.iterdir() if p.is_dir())
    assert folders == sorted(CLASS_NAMES)
    for name in CLASS_NAMES:
        files = sorted((IMAGES / name).glob("*.jpg"))
        assert len(files) >= 30, name
        assert {f.name for f in files} == {f"{name}{i}.jpg" for i in range(1, len(files) + 1)}
        for f in files[:3]:
            with Image.open(f) as img:
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == (224, 224)


def test_sample_total_size_at_most_25_mb():
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, total


def test_labels_txt_and_lb_pkl_match_class_order():
    assert (SAMPLE / "labels.txt").read_text().split("\n")[:-1] == list(CLASS_NAMES)
    # Without unpickling: the file names a scikit-learn LabelBinarizer (joblib format).
    raw = (SAMPLE / "lb.pkl").read_bytes()
    assert b"sklearn.preprocessing" in raw and b"LabelBinarizer" in raw
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    lb = joblib.load(SAMPLE / "lb.pkl")  # our own build artefact, so unpickling is fine here
    assert list(lb.classes_) == list(CLASS_NAMES)


@pytest.mark.parametrize("name,index", [("A", 1), ("M", 17), ("nothing", 40), ("space", 3)])
def test_documented_seed_regenerates_shipped_bytes(name, index):
    shipped = (IMAGES / name / f"{name}{index}.jpg").read_bytes()
    assert render_bytes(name, SAMPLE_SEED, index) == shipped


def test_render_is_deterministic_and_seed_dependent():
    a = np.asarray(render("K", image_rng(5, 10, 1)))
    b = np.asarray(render("K", image_rng(5, 10, 1)))
    c = np.asarray(render("K", image_rng(6, 10, 1)))
    assert a.shape == (224, 224, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10


def _mask_distance(a: str, b: str, seeds: range = range(4)) -> float:
    """1 - IoU of two letters' silhouettes drawn with the same view and jitter."""
    out = []
    for s in seeds:
        ma = silhouette(a, np.random.default_rng(s)) > 0.5
        mb = silhouette(b, np.random.default_rng(s)) > 0.5
        out.append(1 - (ma & mb).sum() / (ma | mb).sum())
    return float(np.mean(out))


@pytest.mark.slow
def test_look_alike_letters_have_closer_silhouettes_than_unrelated_ones():
    alike = [("A", "S"), ("M", "N"), ("S", "T"), ("A", "E"), ("K", "V"), ("G", "H"), ("U", "R")]
    unrelated = [("A", "B"), ("U", "Y"), ("K", "L"), ("A", "V"), ("M", "B"), ("I", "W")]
    near = {p: _mask_distance(*p) for p in alike}
    far = {p: _mask_distance(*p) for p in unrelated}
    assert max(near.values()) < min(far.values()), (near, far)


def test_nothing_has_no_hand_and_every_letter_has_one():
    rng = np.random.default_rng(0)
    assert silhouette("nothing", rng).sum() == 0
    for name in CLASS_NAMES:
        if name != "nothing":
            covered = float((silhouette(name, np.random.default_rng(1)) > 0.5).mean())
            assert 0.03 < covered < 0.6, (name, covered)


@pytest.mark.slow
def test_synth_cli_writes_kaggle_layout(tmp_path):
    assert synth_main(["--out", str(tmp_path / "set"), "--per-class", "1", "--seed", "7"]) == 0
    files = sorted((tmp_path / "set").glob("*/*.jpg"))
    assert [f.parent.name for f in files] == sorted(CLASS_NAMES)
    assert all(f.name == f"{f.parent.name}1.jpg" for f in files)
    assert files[0].read_bytes() == render_bytes(files[0].parent.name, 7, 1)


def test_synth_cli_rejects_bad_options(tmp_path, capsys):
    assert synth_main(["--out", str(tmp_path), "--per-class", "0"]) == 2
    err = capsys.readouterr().err
    assert "--per-class" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_generate_dataset_reports_progress(tmp_path):
    seen = []
    paths = generate_dataset(tmp_path, 1, 3, progress=lambda d, t: seen.append((d, t)))
    assert len(paths) == 29 and seen[-1] == (29, 29)


def test_demo_checkpoint_is_a_seed_state_dict():
    state = torch.load(SAMPLE / "model.pth", map_location="cpu", weights_only=True)
    assert list(state) == [f"{n}.{p}" for n in LAYER_NAMES for p in ("weight", "bias")]
    assert state["fc2.weight"].shape == (29, 256)


@pytest.mark.slow
def test_demo_checkpoint_scores_at_least_90_percent_on_shipped_sample():
    from aslquant.train_demo import load_folder, predict

    model = load_checkpoint(SAMPLE / "model.pth", num_labels=29)
    images, labels = load_folder(IMAGES)
    acc = float((predict(model, images) == labels).float().mean())
    assert acc >= 0.90, acc


@pytest.fixture
def two_threads():
    """Two torch threads for the test, then the previous count again (not left at 2 for the
    tests after it: under xdist a worker may own a single core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_train_demo_is_reproducible(two_threads):
    from aslquant.train_demo import train

    kw = dict(
        seed=11,
        per_class=1,
        epochs=2,
        full_res_epochs=1,
        low_res=96,
        batch_size=16,
        lr=1e-3,
        cache=None,
    )
    m1, _ = train(**kw)
    m2, _ = train(**kw)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # ...and training really moved the weights away from the seeded initialisation.
    torch.manual_seed(11)
    init = CustomCNN(29).state_dict()
    assert not torch.equal(s1["conv1.weight"], init["conv1.weight"])


def test_train_demo_refuses_the_sample_seed(capsys):
    from aslquant.train_demo import train_demo_main

    assert train_demo_main(["--seed", "2026"]) == 2
    assert "2026" in capsys.readouterr().err


@pytest.mark.slow
def test_contact_sheet_png(tmp_path):
    from aslquant.synth import contact_sheet

    out = contact_sheet(tmp_path / "sheet.png", SAMPLE_SEED, cols=6, cell=64)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (6 * 64, 5 * (64 + 22))
    with Image.open(io.BytesIO(out.read_bytes())) as img:
        assert np.asarray(img).std() > 20
