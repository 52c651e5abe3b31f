"""Medical VQA / caption / classification readers into one :class:`Sample` schema.

Every ``read_*`` function returns a :class:`SampleList` (a list with a
``.skipped`` dict of per-reason skip counts). Bad rows raise
:class:`DataError` unless ``skip_invalid=True``. ``VQADataset`` and
``mix_datasets`` live in :mod:`medqwen.data.dataset` and are imported lazily
so that evaluation code can use ``normalize_answer`` without importing torch.
"""
from __future__ import annotations

from typing import Any

from .captions import read_iu_xray, read_roco
from .hf import read_hf
from .llava_med import read_llava_med, strip_image_token
from .medmnist import read_medmnist
from .omnimedvqa import format_options, read_omnimedvqa
from .registry import READERS, read_dataset, register_reader
from .schema import (
    ANSWER_TYPES, DataError, ImageLoadError, Sample, SampleList, load_image, normalize_answer,
    normalize_text, open_image, to_rgb,
)
from .vqa import read_pathvqa, read_slake, read_vqa_rad

_LAZY = {"VQADataset", "mix_datasets", "collate_samples"}

__all__ = [
    "ANSWER_TYPES", "DataError", "ImageLoadError", "READERS", "Sample", "SampleList", "VQADataset",
    "collate_samples", "format_options", "load_image", "mix_datasets", "normalize_answer",
    "normalize_text", "open_image", "read_dataset", "read_hf", "read_iu_xray", "read_llava_med",
    "read_medmnist", "read_omnimedvqa", "read_pathvqa", "read_roco", "read_slake",
    "read_vqa_rad", "register_reader", "strip_image_token", "to_rgb",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
