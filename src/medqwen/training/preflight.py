"""Every dataset of an experiment read and checked before the first training step.

A typo in a reader option, an annotation file in the wrong encoding, an empty dataset or a broken
image in stage 3 used to surface after stages 1-2 had trained (or as a traceback in the middle of a
stage). Here each DataSpec is read once, up front, and refused with a message naming the stage or
evaluation set, the file and what was expected:

- :func:`read_spec`: the reader (unknown options refused by name), ``limit``, then the cheap image
  header check of :mod:`medqwen.data.images`; no samples left is an error;
- :func:`decode_check`: a full decode of every image (through the trainer's feature cache when the
  vision tower stays frozen, which keeps the features for training);
- :func:`mix`: the DataSpecs of a stage combined (``weight`` -> mixture proportions).

``skip_invalid: true`` on a DataSpec drops bad rows and bad images instead (counted in a warning).
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from medqwen.data import Sample, mix_datasets, read_dataset
from medqwen.data.images import bad_image_message, decode_files, find_bad_images
from medqwen.data.registry import READERS, UnknownOptionError, _key, reader_options

from .config import ConfigError, DataSpec

log = logging.getLogger("medqwen.training")

BAD_IMAGE = "bad image"


@dataclass
class SpecData:
    """The samples of one DataSpec, where it is in the experiment and what was skipped."""

    where: str  # e.g. "stage 'sft' data[0]" or "eval[1]"
    spec: DataSpec
    samples: list[Sample]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def skip_invalid(self) -> bool:
        return self.spec.skip_invalid or self.spec.options.get("skip_invalid") is True

    @property
    def label(self) -> str:
        return f"{self.where} ({self.spec.format}" + (f" at {self.spec.path}" if self.spec.path else "") + \
            f", split {self.spec.split!r})"


def read_spec(spec: DataSpec, seed: int, where: str) -> SpecData:
    """Read one DataSpec: reader options checked, ``limit`` applied (seeded), image headers checked."""
    options = dict(spec.options)
    reader = READERS.get(_key(spec.format))
    accepted = reader_options(reader) if reader is not None else None
    if spec.skip_invalid and (accepted is None or "skip_invalid" in accepted):
        options.setdefault("skip_invalid", True)  # bad rows too, not only bad images
    try:
        samples = read_dataset(spec.format, spec.path, spec.split, **options)
    except UnknownOptionError as err:
        raise ConfigError(f"{where}: field 'options': {err}") from None
    skipped = dict(getattr(samples, "skipped", {}) or {})
    samples = list(samples)
    if spec.limit is not None and spec.limit < len(samples):
        random.Random(seed).shuffle(samples)
        samples = samples[: spec.limit]
    data = SpecData(where, spec, samples, skipped)
    bad = find_bad_images(samples, decode=None)
    if bad and not data.skip_invalid:  # about to fail: decode the rest too, so one error lists every bad file
        bad = find_bad_images(samples)
    _drop_bad(data, bad)
    return data


def decode_check(parts: list[SpecData], decode: Callable[[Sample], Any] | None = decode_files) -> None:
    """Decode every image of every part (``decode``: a sample -> raises ImageLoadError), in place."""
    for data in parts:
        _drop_bad(data, find_bad_images(data.samples, decode=decode))


def _drop_bad(data: SpecData, bad: list) -> None:
    if bad and not data.skip_invalid:
        raise ValueError(bad_image_message(bad, len(data.samples), data.label,
                                           f"Fix or remove these files, or set 'skip_invalid: true' on this dataset "
                                           f"({data.where}) to skip them."))
    if bad:
        drop = {b.index for b in bad}
        data.samples = [s for i, s in enumerate(data.samples) if i not in drop]
        data.skipped[BAD_IMAGE] = data.skipped.get(BAD_IMAGE, 0) + len(bad)
        log.warning("%s: skipped %d samples with a bad image (skip_invalid), e.g. %s", data.label, len(bad), bad[0].describe())
    if not data.samples:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(data.skipped.items()))
        raise ValueError(f"{data.label}: no samples" + (f" left (skipped {reasons})" if reasons else "")
                         + "; check 'path', 'split' and 'options' of this dataset")


def mix(parts: list[SpecData], seed: int) -> list[Sample]:
    """One stage's DataSpecs combined: concatenated and shuffled, or mixed by their ``weight``s."""
    specs = [p.spec for p in parts]
    lists = [p.samples for p in parts]
    weights = [spec.weight for spec in specs] if any(spec.weight is not None for spec in specs) else None
    if weights is not None:
        weights = [1.0 if w is None else w for w in weights]
    if len(lists) == 1 and weights is None:
        return lists[0]
    return mix_datasets(lists, weights=weights, seed=seed)


def skip_counts(parts: list[SpecData]) -> dict[str, int]:
    """What ``skip_invalid`` dropped, summed over the parts (for results.json)."""
    total: Counter[str] = Counter()
    for data in parts:
        total.update(data.skipped)
    return dict(total)
