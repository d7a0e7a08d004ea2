"""The bad inputs of issue 6: each refused by the CLI with exit 2 and one line naming the problem.

Every case builds its bad file in a temporary folder; hostile payloads also prove they did not
run (their marker file is never created).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from aslquant.cli import main
from aslquant.run import DEMO_DATA, DEMO_LABELS
from tests.seed_model import SeedCustomCNN

NAMES = [line for line in (DEMO_LABELS.parent / "labels.txt").read_text().split() if line]


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _Call:
    """Pickles to ``func(*args)``: how a hostile pickle runs code when it is loaded."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _small_data(root: Path, names=NAMES, per_class: int = 3) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for src in sorted((DEMO_DATA / name).glob("*.jpg"))[:per_class]:
            (root / name / src.name).write_bytes(src.read_bytes())
    return root


def _case(tmp: Path, case: str) -> tuple[list[str], str]:
    """Build one bad input; return (extra CLI args, text the error line must contain)."""
    marker = tmp / "marker"
    if case == "empty-checkpoint":
        (tmp / "m.pth").write_bytes(b"")
        return ["--checkpoint", str(tmp / "m.pth")], "m.pth: checkpoint file is empty"
    if case == "text-checkpoint":
        (tmp / "m.pth").write_text("weights go here\n")
        return ["--checkpoint", str(tmp / "m.pth")], "m.pth: not a PyTorch checkpoint"
    if case == "full-pickled-model":
        torch.save(SeedCustomCNN(29), tmp / "m.pth")
        return ["--checkpoint", str(tmp / "m.pth")], "m.pth: refusing to load"
    if case == "hostile-checkpoint":
        sd = SeedCustomCNN(29).state_dict()
        sd["x"] = _Touch(marker)
        torch.save(sd, tmp / "m.pth")
        return ["--checkpoint", str(tmp / "m.pth")], "m.pth: refusing to load"
    if case == "escape-in-name":
        (tmp / "evil\x1b[2J\x1b[31m.pth").write_text("weights go here\n")
        return (
            ["--checkpoint", str(tmp / "evil\x1b[2J\x1b[31m.pth")],
            "evil\\x1b[2J\\x1b[31m.pth: not a PyTorch checkpoint",
        )
    if case == "directory-checkpoint":
        (tmp / "m.pth").mkdir()
        return ["--checkpoint", str(tmp / "m.pth")], "m.pth: checkpoint file is a directory"
    if case == "other-architecture":
        torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)).state_dict(), tmp / "m.pth")
        return ["--checkpoint", str(tmp / "m.pth")], "not a CustomCNN state_dict: missing"
    if case == "class-count-mismatch":
        torch.save(SeedCustomCNN(10).state_dict(), tmp / "m.pth")
        return ["--checkpoint", str(tmp / "m.pth")], "fc2 has 10 outputs but the labels file has 29"
    if case == "one-channel-checkpoint":
        sd = SeedCustomCNN(29).state_dict()
        sd["conv1.weight"] = torch.zeros(16, 1, 5, 5)
        torch.save(sd, tmp / "m.pth")
        return ["--checkpoint", str(tmp / "m.pth")], "1 channel"
    if case == "nan-weights":
        sd = SeedCustomCNN(29).state_dict()
        sd["conv2.weight"][0] = float("nan")
        torch.save(sd, tmp / "m.pth")
        return ["--checkpoint", str(tmp / "m.pth")], "conv2.weight contains NaN or Inf"
    if case == "duplicate-labels":
        (tmp / "labels.txt").write_text("\n".join(NAMES[:-1] + [NAMES[0]]))
        return ["--labels", str(tmp / "labels.txt")], "labels.txt"
    if case == "empty-label":
        (tmp / "labels.json").write_text(json.dumps(["A", "", *NAMES[2:]]))
        return ["--labels", str(tmp / "labels.json")], "labels.json"
    if case == "unknown-labels-format":
        (tmp / "labels.bin").write_bytes(bytes(range(256)))
        return ["--labels", str(tmp / "labels.bin")], "labels.bin"
    if case == "hostile-labels":
        import os

        (tmp / "lb.pkl").write_bytes(pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2))
        return ["--labels", str(tmp / "lb.pkl")], "refers to posix.system; refusing to load"
    if case == "missing-folder":
        return ["--data", str(tmp / "nowhere")], "nowhere"
    if case == "no-images":
        for name in NAMES:
            (tmp / "d" / name).mkdir(parents=True)
            (tmp / "d" / name / "readme.txt").write_text("x")
        return ["--data", str(tmp / "d")], "no images"
    if case == "one-class":
        _small_data(tmp / "d", NAMES[:1], per_class=10)
        return ["--data", str(tmp / "d")], "one class"
    if case == "folders-not-matching-labels":
        for k in range(3):
            (tmp / "d" / f"cat{k}").mkdir(parents=True)
            Image.new("RGB", (64, 64)).save(tmp / "d" / f"cat{k}" / "x.jpg")
        return ["--data", str(tmp / "d")], "cat0"
    if case == "input-too-small":
        return ["--input-size", "32"], "32"
    if case == "zero-calibration-images":
        return ["--calib-images", "0"], "--calib-images: expected a whole number 1..4096, got 0"
    if case == "more-calibration-than-exist":
        return ["--calib-images", "2000"], "2000 calibration images"
    if case == "backend-rejects-qscheme":
        return ["--backend", "onednn", "--qscheme", "affine"], "onednn only supports symmetric"
    if case == "unwritable-out":
        (tmp / "afile").write_text("x")
        return ["--out", str(tmp / "afile" / "sub")], "not writable"
    if case == "not-a-zip":
        (tmp / "data.zip").write_text("PK? no, just text")
        return ["--data", str(tmp / "data.zip")], "data.zip"
    if case == "zip-slip":
        with zipfile.ZipFile(tmp / "slip.zip", "w") as zf:
            zf.writestr("../../evil.txt", "x")
            zf.writestr("A/A1.jpg", (DEMO_DATA / "A" / "A1.jpg").read_bytes())
        return ["--data", str(tmp / "slip.zip")], "slip.zip"
    if case == "bad-option":
        return ["--backend", "tpu"], "invalid choice"
    raise AssertionError(case)


CASES = [
    "empty-checkpoint", "text-checkpoint", "full-pickled-model", "hostile-checkpoint",
    "escape-in-name", "directory-checkpoint",
    "other-architecture", "class-count-mismatch", "one-channel-checkpoint", "nan-weights",
    "duplicate-labels", "empty-label", "unknown-labels-format", "hostile-labels",
    "missing-folder", "no-images", "one-class", "folders-not-matching-labels",
    "input-too-small", "zero-calibration-images", "more-calibration-than-exist",
    "backend-rejects-qscheme", "unwritable-out", "not-a-zip", "zip-slip", "bad-option",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
    args, expected = _case(tmp_path, case)
    out = tmp_path / "out"
    if "--out" not in args:
        args += ["--out", str(out)]
    code = main(["report", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expected in err, err
    assert "\x1b" not in err  # a terminal escape in a file name is shown, not obeyed
    assert not (tmp_path / "marker").exists()
    assert not (out / "report.json").exists()
    # Nothing escaped the extraction folder.
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("evil.txt").exists()


@pytest.mark.slow
def test_non_image_files_are_skipped_and_counted(tmp_path, capsys):
    data = _small_data(tmp_path / "d", per_class=3)
    (data / "A" / "notes.txt").write_text("not an image")
    (data / "B" / "broken.jpg").write_bytes((DEMO_DATA / "B" / "B1.jpg").read_bytes()[:200])
    # 96 px: the run only has to read (or skip) every file; figures are not checked here.
    args = ["report", "--data", str(data), "--calib-images", "8", "--input-size", "96"]
    code = main([*args, "--out", str(tmp_path / "o")])
    assert code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    skipped = {row["path"] for row in report["skipped"]}
    assert any("notes.txt" in p for p in skipped) and any("broken.jpg" in p for p in skipped)
    assert "files skipped" in capsys.readouterr().err


def test_hostile_label_pickle_variants_never_run(tmp_path):
    from aslquant.errors import InputError
    from aslquant.labels import load_labels

    marker = tmp_path / "marker"
    payloads = [
        pickle.dumps(_Touch(marker)),
        b'cbuiltins\neval\n(S\'__import__("os").system("touch '
        + str(marker).encode()
        + b"\")'\ntR.",
        b"csubprocess\ncall\n((S'touch'\nS'" + str(marker).encode() + b"'\nltR.",
    ]
    for i, payload in enumerate(payloads):
        path = tmp_path / f"lb{i}.pkl"
        path.write_bytes(payload)
        with pytest.raises(InputError, match="refusing to load|unknown format"):
            load_labels(path)
    assert not marker.exists()
