"""Vision-language models behind one interface (:class:`VisionLanguageModel`).

``load_model(name_or_path)``:

- ``"medqwen-mini"``: EfficientNet-Lite0 + MLP projector + SmolLM2-135M-Instruct (offline, CPU);
- ``"tiny-mini"``: the same architecture at toy size, random (tests);
- ``"tiny-qwen2.5-vl"``: a random toy Qwen2.5-VL (tests);
- a directory written by ``VisionLanguageModel.save_pretrained``: rebuilds its base model and
  loads the saved parts (projector, ...);
- anything else: a Qwen2.5-VL checkpoint directory or hub id (``allow_download=True`` to fetch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .base import IGNORE_INDEX, IMAGE_MARKER, VisionLanguageModel, VLMOutput
from .mini import MedQwenMini, medqwen_mini, preprocess_images, tiny_mini
from .qwen_vl import QwenVL, load_qwen2_5_vl, tiny_qwen2_5_vl
from .saving import CONFIG_NAME, weights_sha256

__all__ = [
    "CONFIG_NAME",
    "IGNORE_INDEX",
    "IMAGE_MARKER",
    "MedQwenMini",
    "QwenVL",
    "VLMOutput",
    "VisionLanguageModel",
    "check_model_name",
    "load_model",
    "load_qwen2_5_vl",
    "medqwen_mini",
    "preprocess_images",
    "weights_sha256",
    "tiny_mini",
    "tiny_qwen2_5_vl",
]

FACTORIES = {"medqwen-mini": medqwen_mini, "tiny-mini": tiny_mini, "tiny-qwen2.5-vl": tiny_qwen2_5_vl}


def load_model(name_or_path: str, **kw: Any) -> VisionLanguageModel:
    """Build a model by name, from a ``save_pretrained`` directory, or from a Qwen2.5-VL checkpoint.

    Keyword arguments go to the factory (e.g. ``cache_dir``, ``system_prompt``, ``seed``,
    ``allow_download``); for a saved directory they override the saved factory arguments.
    """
    check_model_name(name_or_path)
    if name_or_path in FACTORIES:
        return FACTORIES[name_or_path](**kw)
    path = Path(name_or_path)
    if (path / CONFIG_NAME).exists():
        config = json.loads((path / CONFIG_NAME).read_text())
        base = config["base"]
        model = load_model(base["name"], **{**base.get("kwargs", {}), **kw})
        model.load_pretrained(path)
        return model
    try:
        return load_qwen2_5_vl(name_or_path, **kw)
    except OSError as err:  # transformers' "couldn't connect to the hub / not a model folder" and the like
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"model {name_or_path!r} could not be loaded as a Qwen2.5-VL checkpoint ({first}); "
                         f"{_KNOWN}") from err


_KNOWN = (f"a model is one of the names {sorted(FACTORIES)}, a folder written by medqwen train (its final/model), "
          f"a Qwen2.5-VL checkpoint folder, or a hub id such as 'Qwen/Qwen2.5-VL-3B-Instruct' (downloaded only with "
          f"model_kwargs: {{allow_download: true}})")


def check_model_name(name_or_path: str) -> None:
    """A known model name, an existing folder or an ``org/name`` hub id; anything else (a typo of a
    name, a missing folder) is refused before a run starts, with the known names (not a hub error)."""
    if name_or_path in FACTORIES or Path(name_or_path).exists():
        return
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        return  # a hub id: found in the local hub cache or downloaded when the model is built
    from medqwen.errors import ConfigError, did_you_mean

    raise ConfigError(f"unknown model {name_or_path!r}{did_you_mean(name_or_path, FACTORIES)}: not a known name and "
                     f"no such folder; {_KNOWN}")
