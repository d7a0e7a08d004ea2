"""The rooms hold: the engine runs without Streamlit, importing it changes no process-wide
setting, and method names are written only in the method registry."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from aslquant.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent

#: Every engine module (everything in aslquant/ but the Streamlit kit in aslquant/ui/, and the
#: ``python -m aslquant`` entry point, which runs the CLI when imported).
ENGINE_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "aslquant").rglob("*.py")
    if "ui" not in p.relative_to(ROOT / "aslquant").parts and p.name != "__main__.py"
)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_every_engine_module_imports_with_streamlit_unimportable():
    code = f"""
import importlib, importlib.abc, sys

class NoStreamlit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "streamlit" or name.startswith("streamlit."):
            raise ImportError("streamlit is not importable in this test")
        return None

sys.meta_path.insert(0, NoStreamlit())
for name in {ENGINE_MODULES!r}:
    importlib.import_module(name)
assert "streamlit" not in sys.modules
ui = sorted(m for m in sys.modules if m.startswith("aslquant.ui"))
assert not ui, ui
print(len({ENGINE_MODULES!r}))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) == len(ENGINE_MODULES) > 40


def test_importing_the_engine_changes_no_process_wide_setting():
    """Warning filters, logger levels, Pillow's pixel limit and the environment are the same
    before and after importing every engine module; only runtime.configure() changes them."""
    code = f"""
import importlib, logging, os, warnings
from PIL import Image
import torch  # torch's own import-time settings are not ours

def state():
    loggers = {{n: l.level for n, l in logging.root.manager.loggerDict.items()
                if isinstance(l, logging.Logger)}}
    return (list(warnings.filters), logging.root.level, loggers, Image.MAX_IMAGE_PIXELS,
            dict(os.environ))

before = state()
for name in {ENGINE_MODULES!r}:
    importlib.import_module(name)
after = state()
names = ("warning filters", "root logger level", "logger levels", "Pillow pixel limit",
         "environment")
for what, b, a in zip(names, before, after):
    if what == "logger levels":  # loggers created by the imports start unset (NOTSET)
        changed = {{n: v for n, v in a.items() if b.get(n, logging.NOTSET) != v}}
        assert not changed, (what, changed)
    else:
        assert b == a, what
from aslquant import runtime
runtime.configure()
assert state() != after  # configure() is where they change
print("ok")
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_method_names_are_written_only_in_the_registry():
    names = set(METHODS)
    files = [*(ROOT / "aslquant").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
    found = []
    for path in files:
        if path.name == "methods.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # A report key that happens to be spelt like a method (``q["qat"]``) is not a method.
        keys = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in keys:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert found == []
