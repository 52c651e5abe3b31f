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

from .base import CONFIG_NAME, IGNORE_INDEX, IMAGE_MARKER, VisionLanguageModel, VLMOutput
from .mini import MedQwenMini, medqwen_mini, preprocess_images, tiny_mini
from .qwen_vl import QwenVL, load_qwen2_5_vl, tiny_qwen2_5_vl

__all__ = [
    "CONFIG_NAME",
    "IGNORE_INDEX",
    "IMAGE_MARKER",
    "MedQwenMini",
    "QwenVL",
    "VLMOutput",
    "VisionLanguageModel",
    "load_model",
    "load_qwen2_5_vl",
    "medqwen_mini",
    "preprocess_images",
    "tiny_mini",
    "tiny_qwen2_5_vl",
]

FACTORIES = {"medqwen-mini": medqwen_mini, "tiny-mini": tiny_mini, "tiny-qwen2.5-vl": tiny_qwen2_5_vl}


def load_model(name_or_path: str, **kw: Any) -> VisionLanguageModel:
    """Build a model by name, from a ``save_pretrained`` directory, or from a Qwen2.5-VL checkpoint.

    Keyword arguments go to the factory (e.g. ``cache_dir``, ``system_prompt``, ``seed``,
    ``allow_download``); for a saved directory they override the saved factory arguments.
    """
    if name_or_path in FACTORIES:
        return FACTORIES[name_or_path](**kw)
    path = Path(name_or_path)
    if (path / CONFIG_NAME).exists():
        config = json.loads((path / CONFIG_NAME).read_text())
        base = config["base"]
        model = load_model(base["name"], **{**base.get("kwargs", {}), **kw})
        model.load_pretrained(path)
        return model
    return load_qwen2_5_vl(name_or_path, **kw)
