"""aslquant: quantize an ASL CustomCNN and see what INT8 does to it."""

from aslquant import _quiet  # noqa: F401  (silences torch.ao deprecation noise, once)

__version__ = "0.1.0"
