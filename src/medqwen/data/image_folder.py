"""Reader for classification data stored as one image folder per class (``root/<split>/<class>/*.jpg``).

Each image becomes one closed multiple-choice question whose answer is its class name and whose
``extra["candidates"]`` lists every class name (what a likelihood-ranking scorer compares), e.g. the
brain tumour MRI set of ``../shared/data/brain_tumor_mri``::

    {format: image_folder, path: .../brain_tumor_mri, split: test,
     options: {classes: [glioma, meningioma, pituitary], per_class: 50,
               class_names: {pituitary: pituitary tumor},
               question: "Which type of brain tumor does this MRI show: {options}?"}}
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

from .schema import Sample, SampleList, normalize_answer
from .validate import canonical_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_QUESTION = "Which class does this image belong to: {options}?"
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def _split_folder(root: Path, split: str) -> Path:
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    raise FileNotFoundError(f"{root}: no folder for split {split!r} (looked for {list(SPLIT_FOLDERS[split])}; found {present})")


def join_options(names: Sequence[str]) -> str:
    """"a, b or c" (the options as they appear in the question)."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def read_image_folder(
    root: str | Path,
    split: str = "train",
    *,
    classes: Sequence[str] | None = None,
    class_names: Mapping[str, str] | None = None,
    question: str = DEFAULT_QUESTION,
    per_class: int | None = None,
    seed: int = 0,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    source: str | None = None,
) -> SampleList:
    """Read ``root/<split>/<class folder>/<image>`` as closed multiple-choice questions.

    Args:
        root: the dataset folder (holding train/, test/ and/or val/).
        split: train, val or test (aliases accepted; folder names train/training, val/valid/validation, test/testing).
        classes: class folders to use, in this order (default: every sub-folder, sorted). A named folder
            that does not exist is an error, so a typo cannot silently drop a class.
        class_names: folder name -> the class name used in the question, answer and candidates
            (default: the folder name with ``_`` replaced by a space).
        question: the question template; ``{options}`` becomes the class names as "a, b or c".
        per_class: keep a seeded random sample of at most this many images per class (default: all).
        seed: seeds the per-class sample (with the class folder, so classes are sampled independently).
        extensions: image file suffixes (case-insensitive).
        source: ``Sample.source`` (default: the root folder's name).

    Samples are ordered by class, then file name. ``extra``: ``label`` (class name), ``class_folder``,
    ``file`` (path relative to the split folder) and ``candidates`` (all class names).
    """
    split = canonical_split(split)
    root = Path(root)
    folder = _split_folder(root, split)
    present = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is None:
        classes = present
    missing = [c for c in classes if c not in present]
    if missing:
        raise FileNotFoundError(f"{folder}: class folder(s) {missing} not found; present: {present}")
    if not classes:
        raise FileNotFoundError(f"{folder}: no class folders")
    class_names = dict(class_names or {})
    unknown = sorted(set(class_names) - set(classes))
    if unknown:
        raise ValueError(f"class_names has key(s) {unknown} that are not among the classes {list(classes)}")
    names = [normalize_answer(class_names.get(c, c.replace("_", " "))) for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"class names {names} are not distinct")
    if "{options}" not in question:
        text = question
    else:
        text = question.replace("{options}", join_options(names))
    suffixes = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    out = SampleList()
    for class_folder, name in zip(classes, names):
        files = sorted(p for p in (folder / class_folder).iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise FileNotFoundError(f"{folder / class_folder}: no image files with suffix {sorted(suffixes)}")
        if per_class is not None and per_class < len(files):
            files = sorted(random.Random(f"{seed}:{class_folder}").sample(files, per_class))
        for path in files:
            extra = {"label": name, "class_folder": class_folder, "file": str(path.relative_to(folder)), "candidates": list(names)}
            out.append(Sample([str(path.resolve())], text, name, "closed", source or root.name, split, extra))
    return out
