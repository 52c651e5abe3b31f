"""MedQwen: medical vision-language models fine-tuned with Sparse Spectral LoRA (built on `sslora`)."""

import importlib.util as _importlib_util

__version__ = "0.1.0"

# `pip install .` installs only the sslora library's dependencies; medqwen's come with its extra.
# Checked here (find_spec imports nothing) so that the error names the fix, not a module deep inside.
_EXTRA = {"transformers": "transformers", "accelerate": "accelerate", "PIL": "pillow", "gguf": "gguf",
          "tensorboard": "tensorboard", "matplotlib": "matplotlib"}
_missing = [package for module, package in _EXTRA.items() if _importlib_util.find_spec(module) is None]
if _missing:
    raise ImportError(f"medqwen needs its extra (missing: {', '.join(_missing)}): pip install '.[medqwen]' "
                      f"in the repository")
del _missing
