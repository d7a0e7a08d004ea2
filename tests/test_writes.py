"""Nothing is written outside the output and cache folders, and never through a symlink."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.slow
def test_pt2e_with_onnx_writes_only_into_out_and_the_cache_folder(tmp_path):
    home, tmp, out = tmp_path / "home", tmp_path / "tmp", tmp_path / "out"
    for path in (home, tmp):
        path.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASLQUANT_", "XDG_"))}
    env |= {"HOME": str(home), "TMPDIR": str(tmp)}
    done = subprocess.run(
        [sys.executable, "-m", "aslquant", "report", "--method", "pt2e", "--onnx",
         "--eval-images", "29", "--calib-images", "8", "--input-size", "96", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"report.json", "report.md", "report.html"} <= _tree(out)
    assert _tree(tmp) == set()  # Inductor, ONNX Runtime and tempfile all stayed in the cache
    outside = {p for p in _tree(home) if not p.startswith(".cache/aslquant")}
    assert outside <= {".cache"}, sorted(outside)


def test_reports_replace_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    from aslquant.report import write_text_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").symlink_to(victim)
    write_text_atomic(out / "report.json", '{"new": true}')
    assert victim.read_text() == "precious"
    assert not (out / "report.json").is_symlink()
    assert (out / "report.json").read_text() == '{"new": true}'
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]  # no temp file left
