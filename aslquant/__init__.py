"""aslquant: quantize an ASL CustomCNN and see what INT8 does to it.

Importing the package changes no process-wide setting; ``aslquant.runtime.configure()`` applies
the ones the tool needs (warning filters, logger levels, Pillow's limit, Inductor settings).
"""

__version__ = "0.1.0"
