"""Zero-shot classification tasks: labelled images + class prompts (names x templates).

Built-in tasks (``build_task(name, path, split)``):

=================  ====================================================  ==========================
name               labels                                                default split
=================  ====================================================  ==========================
pneumoniamnist     PneumoniaMNIST npz: normal / pneumonia                test
vqa_rad_organ      VQA-RAD ``image_organ``: HEAD / CHEST / ABD, one per image   test
roco_modality      ROCOv2 concept CUIs -> ct / x-ray / mri / ultrasound / angiography   val
medmnist           any single-label MedMNIST npz (class names given)     test
image_folder       ``root/<split>/<class>/*`` (e.g. brain_tumor_mri)     test
=================  ====================================================  ==========================

Labels come from the readers and tables of :mod:`medqwen.data` (``image_organ`` via
``VQA_RAD_ORGANS``, ROCOv2 modality via ``roco_label`` and its CUI table), so the grounding probes
and the zero-shot tasks classify the same way. A task also turns into training captions
(:meth:`ZeroShotTask.captions`) for fine-tuning on a *different* split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from medqwen.data.captions import read_roco
from medqwen.data.grounding import CLASSES, VQA_RAD_ORGANS, roco_label
from medqwen.data.image_folder import read_image_folder
from medqwen.data.medmnist import read_medmnist
from medqwen.data.schema import Sample
from medqwen.data.vqa import read_vqa_rad

GENERIC_TEMPLATES = ["{}.", "a medical image of {}.", "a radiology image showing {}."]

PROMPTS: dict[str, dict[str, Any]] = {
    "pneumoniamnist": {
        "names": {"normal": ["a normal chest", "clear lungs", "no pneumonia"],
                  "pneumonia": ["pneumonia", "a lung infection", "pulmonary opacities"]},
        "templates": ["a chest x-ray showing {}.", "a chest radiograph with {}.", "{}."],
    },
    "vqa_rad_organ": {
        "names": {"head": ["the head", "the brain"], "chest": ["the chest", "the lungs"],
                  "abdomen": ["the abdomen", "the abdomen and pelvis"]},
        "templates": ["a radiology image of {}.", "a scan of {}.", "a medical image showing {}."],
    },
    "roco_modality": {
        "names": {"ct": ["a CT scan", "computed tomography"], "x-ray": ["an x-ray", "a plain radiograph"],
                  "mri": ["an MRI scan", "magnetic resonance imaging"], "ultrasound": ["an ultrasound image", "sonography"],
                  "angiography": ["an angiogram", "angiography"]},
        "templates": ["{}.", "a medical image acquired with {}.", "this image is {}."],
    },
    "brain_tumor_mri": {
        "names": {"glioma": ["glioma"], "meningioma": ["meningioma"], "no tumor": ["no tumor", "a normal brain"],
                  "pituitary": ["pituitary tumor", "a pituitary adenoma"]},
        "templates": ["a brain MRI showing {}.", "an MRI scan of the brain with {}.", "{}."],
    },
}


@dataclass
class ZeroShotTask:
    """Images (``samples``, loadable with ``load_image``) with integer ``labels`` into ``classes``.

    ``names[c]``: the phrases naming class c; ``templates``: strings with one ``{}``. The prompts of a
    class are every template filled with every name.
    """

    name: str
    classes: list[str]
    names: dict[str, list[str]]
    templates: list[str]
    samples: list[Sample]
    labels: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.samples) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.samples)} samples but {len(self.labels)} labels")
        missing = [c for c in self.classes if not self.names.get(c)]
        if missing:
            raise ValueError(f"{self.name}: no prompt names for classes {missing}")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if bad or not self.templates:
            raise ValueError(f"{self.name}: templates need exactly one '{{}}': {bad or self.templates}")

    def class_texts(self) -> list[list[str]]:
        """Per class, its prompts: templates x names."""
        return [[t.format(n) for t in self.templates for n in self.names[c]] for c in self.classes]

    def subset(self, n: int | None, seed: int = 0) -> "ZeroShotTask":
        """A seeded random sample of at most ``n`` images, per class in proportion (order kept)."""
        if n is None or n >= len(self.samples):
            return self
        keep = sorted(random.Random(f"{seed}:{self.name}").sample(range(len(self.samples)), n))
        return replace(self, samples=[self.samples[i] for i in keep], labels=[self.labels[i] for i in keep])

    def per_class(self, k: int | None, seed: int = 0) -> "ZeroShotTask":
        """At most ``k`` seeded random images per class (balances training data)."""
        if k is None:
            return self
        rng, keep = random.Random(f"{seed}:{self.name}:per_class"), []
        for c in range(len(self.classes)):
            idx = [i for i, y in enumerate(self.labels) if y == c]
            keep += idx if len(idx) <= k else rng.sample(idx, k)
        keep.sort()
        return replace(self, samples=[self.samples[i] for i in keep], labels=[self.labels[i] for i in keep])

    def captions(self, seed: int = 0) -> list[str]:
        """One seeded caption per image: a random template filled with a random name of its class."""
        rng = random.Random(f"{seed}:{self.name}:captions")
        return [rng.choice(self.templates).format(rng.choice(self.names[self.classes[y]])) for y in self.labels]


def _make(name: str, classes: list[str], labelled: list[tuple[Sample, str]], prompts: dict[str, Any] | None,
          templates: Sequence[str] | None = None, **meta: Any) -> ZeroShotTask:
    spec = prompts or PROMPTS.get(name) or {}
    names = {c: list(spec.get("names", {}).get(c) or [c]) for c in classes}
    index = {c: i for i, c in enumerate(classes)}
    return ZeroShotTask(name, classes, names, list(templates or spec.get("templates") or GENERIC_TEMPLATES),
                        [s for s, _ in labelled], [index[c] for _, c in labelled], meta)


def _npz(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected exactly one .npz file, found {[p.name for p in found]}")
        return found[0]
    return path


def medmnist_task(path: str | Path, split: str = "test", *, class_names: Sequence[str] | None = None,
                  name: str | None = None, prompts: dict[str, Any] | None = None,
                  templates: Sequence[str] | None = None) -> ZeroShotTask:
    """Any single-label MedMNIST npz (file or its folder); ``class_names`` default to the reader's known names."""
    samples = read_medmnist(_npz(path), split, mode="as_labels", class_names=class_names)
    classes = list(dict.fromkeys(s.extra["class_name"] for s in sorted(samples, key=lambda s: s.extra["label"])))
    all_names = list(class_names) if class_names else classes
    task_name = name or (samples[0].source if samples else "medmnist")
    return _make(task_name, all_names, [(s, s.extra["class_name"]) for s in samples], prompts, templates)


def pneumoniamnist_task(path: str | Path, split: str = "test") -> ZeroShotTask:
    """PneumoniaMNIST (28 x 28 chest X-rays): normal vs pneumonia."""
    return medmnist_task(path, split, class_names=["normal", "pneumonia"], name="pneumoniamnist")


def image_folder_task(root: str | Path, split: str = "test", *, name: str | None = None,
                      class_names: dict[str, str] | None = None, prompts: dict[str, Any] | None = None,
                      templates: Sequence[str] | None = None, **reader_options: Any) -> ZeroShotTask:
    """``root/<split>/<class folder>/*`` (read by ``read_image_folder``; folder ``no_tumor`` -> class ``no tumor``)."""
    samples = read_image_folder(root, split, class_names=class_names, **reader_options)
    classes = list(samples[0].extra["candidates"]) if samples else []
    return _make(name or Path(root).name, classes, [(s, s.extra["label"]) for s in samples], prompts, templates)


def vqa_rad_organ_task(root: str | Path, split: str = "test", *, exclude_images: Sequence[str] = ()) -> ZeroShotTask:
    """VQA-RAD images by ``image_organ`` (head / chest / abdomen), one entry per image (first row wins);
    images whose path is in ``exclude_images`` are left out (e.g. the test images, to train on the rest)."""
    excluded, seen, labelled = set(exclude_images), set(), []
    for sample in read_vqa_rad(root, split):
        organ = VQA_RAD_ORGANS.get(str(sample.extra.get("image_organ", "")).strip().upper())
        image = sample.images[0]
        if organ is None or image in seen or image in excluded:
            continue
        seen.add(image)
        labelled.append((sample, organ))
    return _make("vqa_rad_organ", ["head", "chest", "abdomen"], labelled, None)


def roco_modality_task(root: str | Path, split: str = "val") -> ZeroShotTask:
    """ROCOv2 images by imaging modality from their concept CUIs (``roco_label``; unlabelled / ambiguous left out)."""
    labelled = [(s, label) for s in read_roco(root, split) if (label := roco_label(s, "modality")) is not None]
    return _make("roco_modality", list(CLASSES["modality"]), labelled, None)


def vqa_rad_images(root: str | Path, split: str) -> list[str]:
    """Image paths of a VQA-RAD split (to keep training images disjoint from evaluation images)."""
    return sorted({s.images[0] for s in read_vqa_rad(root, split)})


BUILDERS = {
    "pneumoniamnist": pneumoniamnist_task,
    "vqa_rad_organ": vqa_rad_organ_task,
    "roco_modality": roco_modality_task,
    "medmnist": medmnist_task,
    "image_folder": image_folder_task,
}


def build_task(kind: str, path: str | Path, split: str | None = None, **options: Any) -> ZeroShotTask:
    """``kind`` in BUILDERS; ``split`` defaults to each builder's evaluation split."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown zero-shot task {kind!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[kind](path, **({"split": split} if split else {}), **options)
