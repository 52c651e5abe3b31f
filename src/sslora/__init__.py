"""Sparse Spectral LoRA (SSLoRA): LoRA experts initialised from disjoint SVD segments, top-k routed."""

__version__ = "0.1.0"

from .config import PRESETS, ConfigError, SSLoRAConfig  # noqa: E402
from .layer import SSLoRALayer, reference_forward  # noqa: E402
from .model import SSLoRAModel, get_sslora_model  # noqa: E402

from ._io import WeightsFileError, atomic_write

__all__ = ["atomic_write", "ConfigError", "WeightsFileError", "SSLoRAConfig", "SSLoRAModel", "SSLoRALayer", "PRESETS", "get_sslora_model", "reference_forward", "__version__"]
