"""Reader for MedMNIST ``.npz`` files (in-memory images, no files)."""
from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .schema import Sample, SampleList, normalize_answer
from .validate import UNKNOWN_LABEL, RowContext, canonical_split, collect

# Class names for the sets we use; other MedMNIST sets need class_names=.
KNOWN_CLASS_NAMES: dict[str, list[str]] = {
    "pneumoniamnist": ["normal", "pneumonia"],
}
YES_NO_TEMPLATE = "Is there evidence of {name}?"
LABEL_TEMPLATE = "Which class does this image belong to? Options: {options}."
MODES = ("as_labels", "as_yes_no")


def read_medmnist(
    path: str | Path,
    split: str = "train",
    *,
    mode: str = "as_labels",
    class_names: Sequence[str] | dict[int, str] | None = None,
    asked_classes: Sequence[str] | None = None,
    yes_no_template: str = YES_NO_TEMPLATE,
    yes_no_questions: dict[str, str] | None = None,
    balance: bool = True,
    seed: int = 0,
    source: str | None = None,
    skip_invalid: bool = False,
) -> SampleList:
    """Read one split of a MedMNIST v2 npz file (single-label sets only).

    The npz holds ``{split}_images`` (N,H,W) or (N,H,W,3) uint8 and
    ``{split}_labels`` (N,1) ints. Images stay in memory (views in
    ``Sample.image``, ``images == []``); use ``load_image`` to get RGB.

    Modes:
      - ``as_labels``: one sample per image; the question lists the classes,
        answer = class name, closed.
      - ``as_yes_no``: closed yes/no questions, one fixed question per asked
        class (``yes_no_questions[name]`` or ``yes_no_template``, default
        "Is there evidence of {name}?"). ``asked_classes`` defaults to the
        second class for binary sets (pneumonia) and to every class
        otherwise. With ``balance`` (default) each question gets as many
        "yes" as "no" samples by random undersampling of the larger side, so
        neither the answer prior nor the question text gives the answer away
        (PneumoniaMNIST train is 90% pneumonia); an image may then appear
        under several questions in multi-class sets. ``balance=False`` asks
        every asked-class question for every image (natural prevalence, for
        evaluation). Deterministic given ``seed``; ordered by image index.

    ``class_names`` (index -> name) defaults to the known names for the file
    stem (``pneumoniamnist[_224]``: normal, pneumonia). ``source`` defaults
    to that stem. ``extra`` has ``index``, ``label``, ``class_name`` and, for
    yes/no, ``asked_class``. A label outside ``class_names`` is an
    ``unknown label`` DataError.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    split = canonical_split(split)
    path = Path(path)
    # MedMNIST+ files carry the resolution: pneumoniamnist_224.npz.
    stem = re.sub(r"_\d+$", "", path.stem.lower())
    name = source or stem
    names = _class_names(stem, class_names)
    with np.load(path, allow_pickle=False) as npz:  # never unpickle downloaded files
        images = npz[f"{split}_images"]
        labels = np.asarray(npz[f"{split}_labels"])
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise ValueError(f"{path}: multi-label MedMNIST ({labels.shape[1]} labels) "
                         "is not supported")
    labels = labels.reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    label_question = LABEL_TEMPLATE.format(options=", ".join(names))

    def build(ctx: RowContext, label: int) -> Sample:
        i = ctx.index
        if not 0 <= label < len(names):
            raise ctx.error("label", UNKNOWN_LABEL, f"{label} not in 0..{len(names) - 1}")
        extra = {"index": i, "label": label, "class_name": names[label]}
        return Sample([], label_question, normalize_answer(names[label]), "closed", name, split,
                      extra, images[i])

    rows = enumerate(int(x) for x in labels.tolist())
    by_label = collect(f"{path}[{split}]", rows, build, skip_invalid=skip_invalid)
    if mode == "as_labels":
        return by_label
    if asked_classes is None:
        asked_classes = names[1:] if len(names) == 2 else names
    unknown = [c for c in asked_classes if c not in names]
    if unknown:
        raise ValueError(f"asked_classes {unknown} not in class_names {names}")
    questions = {c: (yes_no_questions or {}).get(c, yes_no_template.format(name=c))
                 for c in asked_classes}
    rng = random.Random(seed)
    picked: list[tuple[int, str, Sample]] = []
    for asked in asked_classes:
        pos = [s for s in by_label if s.extra["class_name"] == asked]
        neg = [s for s in by_label if s.extra["class_name"] != asked]
        if balance:
            k = min(len(pos), len(neg))
            pos, neg = rng.sample(pos, k), rng.sample(neg, k)
        picked += [(s.extra["index"], asked, s) for s in pos + neg]
    out = SampleList(skipped=by_label.skipped)
    for _, asked, s in sorted(picked, key=lambda t: (t[0], asked_classes.index(t[1]))):
        answer = "yes" if s.extra["class_name"] == asked else "no"
        out.append(replace(s, question=questions[asked], answer=answer,
                           extra={**s.extra, "asked_class": asked}))
    return out


def _class_names(name: str, class_names: Sequence[str] | dict[int, str] | None) -> list[str]:
    if class_names is None:
        if name not in KNOWN_CLASS_NAMES:
            raise ValueError(f"no built-in class names for {name!r}; pass class_names=")
        return list(KNOWN_CLASS_NAMES[name])
    if isinstance(class_names, dict):
        keys = sorted(int(k) for k in class_names)
        if keys != list(range(len(keys))):
            raise ValueError(f"class_names keys must be 0..n-1, got {keys}")
        return [str(class_names[k] if k in class_names else class_names[str(k)]) for k in keys]
    return [str(c) for c in class_names]
