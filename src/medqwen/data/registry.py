"""Name -> reader dispatch, for YAML configs such as::

    datasets:
      - {name: vqa_rad, path: ../shared/data/vqa_rad, split: train}
      - {name: slake, path: data/slake, split: val, q_lang: en}
      - {name: hf://flaviagiammarino/path-vqa, split: test}
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from medqwen.errors import ConfigError, did_you_mean, unknown_keys

from .captions import read_iu_xray, read_roco
from .grounding import read_roco_grounding, read_vqa_rad_organ
from .hf import HF_PREFIX, read_hf
from .image_folder import read_image_folder
from .llava_med import read_llava_med
from .medmnist import read_medmnist
from .omnimedvqa import read_omnimedvqa
from .schema import SampleList
from .synthetic import make_synthetic_vqa, read_synthetic
from .vqa import read_pathvqa, read_slake, read_vqa_rad

Reader = Callable[..., SampleList]

READERS: dict[str, Reader] = {
    "vqa_rad": read_vqa_rad,
    "slake": read_slake,
    "pathvqa": read_pathvqa,
    "omnimedvqa": read_omnimedvqa,
    "llava_med": read_llava_med,
    "roco": read_roco,
    "iu_xray": read_iu_xray,
    "medmnist": read_medmnist,
    "synthetic": read_synthetic,
    "roco_grounding": read_roco_grounding,
    "vqa_rad_organ": read_vqa_rad_organ,
    "image_folder": read_image_folder,
}
ALIASES = {
    "vqarad": "vqa_rad", "path_vqa": "pathvqa", "omnimed_vqa": "omnimedvqa",
    "llavamed": "llava_med", "rocov2": "roco", "iuxray": "iu_xray", "openi": "iu_xray",
    "pneumoniamnist": "medmnist",
}


# Readers that hand their ``**options`` on to another function accept that function's options too.
FORWARDED_OPTIONS: dict[Reader, Callable[..., Any]] = {
    read_roco_grounding: read_roco, read_vqa_rad_organ: read_vqa_rad, read_synthetic: make_synthetic_vqa,
}


class UnknownOptionError(ConfigError):
    """A reader option (a DataSpec's ``options:`` key) the reader does not take."""


def reader_options(reader: Callable[..., Any]) -> set[str] | None:
    """Keyword options of a reader (its first parameter, the path, and ``split`` excluded), following
    ``**options`` handed on to another function; None if they cannot be known (e.g. ``hf``'s, which go
    to ``datasets.load_dataset``)."""
    params = list(inspect.signature(reader).parameters.values())[1:]
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "split"}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        if reader not in FORWARDED_OPTIONS:
            return None
        inner = reader_options(FORWARDED_OPTIONS[reader])
        return None if inner is None else names | inner
    return names


def check_options(name_or_format: str, opts: dict[str, Any]) -> None:
    """Refuse options the reader does not take, naming them and the allowed ones (not a TypeError)."""
    key = _key(name_or_format)
    reader = READERS.get(key)
    allowed = None if reader is None else reader_options(reader)
    unknown = set(opts) - allowed if allowed is not None else set()
    if unknown:
        raise UnknownOptionError(f"reader {key!r}: {unknown_keys('option', unknown, allowed)}")


def _key(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    return ALIASES.get(key, key)


def register_reader(name: str, reader: Reader) -> None:
    """Add (or replace) a reader so configs can refer to it by ``name``."""
    READERS[_key(name)] = reader


def read_dataset(name_or_format: str, path: str | Path | None = None, split: str = "train",
                 **opts: Any) -> SampleList:
    """Read ``path`` with the reader registered as ``name_or_format``.

    Names (case and ``-``/``_`` insensitive): vqa_rad, slake, pathvqa,
    omnimedvqa, llava_med, roco, iu_xray, medmnist, plus aliases in
    ``ALIASES``. ``"hf://<id>"`` (path unused) or ``"hf"`` with ``path=<id>``
    go to :func:`read_hf`. ``opts`` are passed to the reader unchanged.
    """
    if name_or_format.startswith(HF_PREFIX):
        return read_hf(name_or_format, split, **opts)
    key = _key(name_or_format)
    if key == "hf":
        if path is None:
            raise ValueError("read_dataset('hf', path=<dataset id>) needs the dataset id as path")
        return read_hf(str(path), split, **opts)
    if key not in READERS:
        raise ValueError(f"unknown dataset {name_or_format!r}{did_you_mean(key, list(READERS) + list(ALIASES))}; "
                         f"known: {sorted(READERS)} or hf://<id>")
    if path is None:
        raise ValueError(f"read_dataset({name_or_format!r}) needs a path")
    check_options(key, opts)
    return READERS[key](path, split, **opts)
