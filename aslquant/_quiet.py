"""The one place that silences torch.ao.quantization's deprecation warnings.

torch 2.13 warns on every use of the eager/FX quantization APIs that they move to torchao.
They still work, and this tool uses them deliberately; one filter here keeps the CLI, the tests
and the dashboard readable without hiding any other warning.
"""

import logging
import warnings

warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*deprecated.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.ao\..*")
# Deprecation notices torch 2.13 raises as UserWarning from inside torch.ao and its kernels.
warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated.*")
warnings.filterwarnings("ignore", message=r".*Please use quant_min and quant_max.*")

# torchao's import registers an Enum with torch's pytree, which logs a deprecation notice.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
