"""Closed questions built from image labels: what is visible, asked so that only the image can answer.

Two uses, on disjoint images:

- **alignment data** (stage 1): ROCOv2 *train* concept labels and VQA-RAD ``image_organ`` turned
  into balanced yes/no and multiple-choice questions (the projector learns to name what it sees);
- **grounding probe sets** (evaluation): the same labels of ROCOv2 *valid* images, asked with
  wordings that never occur in the alignment data (``wording="probe"``), so a model can only
  answer them from the image, not from a memorised phrase.

Labels (UMLS CUIs of ROCOv2 / ImageCLEFmedical Caption; the first manual concept of an image is
its modality, the others give body region and projection):

=========  ==============================  =============================
CUI        UMLS name                       label
=========  ==============================  =============================
C0040405   X-Ray Computed Tomography       modality ``ct``
C1306645   Plain x-ray                     modality ``x-ray``
C0024485   Magnetic Resonance Imaging      modality ``mri``
C0041618   Ultrasonography                 modality ``ultrasound``
C0002978   Angiogram                       modality ``angiography``
C0817096   Chest                           region ``chest``
C0037303   Bone structure of cranium       region ``head``
C0000726   Abdomen                         region ``abdomen``
C0030797   Pelvis                          region ``abdomen`` (abdomen/pelvis)
C0023216   Lower Extremity                 region ``limb``
C1140618   Upper Extremity                 region ``limb``
=========  ==============================  =============================

Images with no label for a task, or with two different labels (e.g. chest and pelvis), are left
out of that task. VQA-RAD ``image_organ`` maps HEAD -> head, CHEST -> chest, ABD -> abdomen.

Every question carries ``extra["candidates"]`` (the answers a ranking scorer compares),
``extra["label"]`` (the image's class) and ``extra["task"]``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable

from .captions import read_roco
from .schema import Sample, SampleList
from .vqa import read_vqa_rad

MODALITY_CUIS = {
    "C0040405": "ct", "C1306645": "x-ray", "C0024485": "mri", "C0041618": "ultrasound", "C0002978": "angiography",
}
REGION_CUIS = {
    "C0817096": "chest", "C0037303": "head", "C0000726": "abdomen", "C0030797": "abdomen",
    "C0023216": "limb", "C1140618": "limb",
}
VQA_RAD_ORGANS = {"HEAD": "head", "CHEST": "chest", "ABD": "abdomen"}
TASKS = ("modality", "region")
STYLES = ("yesno", "choice", "open")
WORDINGS = ("train", "probe", "all", "varied")

# How each class is named in a question. Alignment ("train") and probe wordings never share a
# phrase, so a probe answer cannot come from a memorised question.
NAMES = {
    "train": {
        "ct": ["a CT scan", "a CT image"], "x-ray": ["an X-ray", "a plain radiograph"],
        "mri": ["an MRI scan", "an MR image"], "ultrasound": ["an ultrasound image", "a sonogram"],
        "angiography": ["an angiogram", "an angiography image"],
        "chest": ["the chest", "the thorax"], "head": ["the head", "the brain or skull"],
        "abdomen": ["the abdomen or pelvis", "the abdomen"], "limb": ["an arm or leg", "a limb"],
    },
    "probe": {
        "ct": ["a computed tomography scan"], "x-ray": ["a plain film radiograph"],
        "mri": ["a magnetic resonance scan"], "ultrasound": ["a sonographic image"],
        "angiography": ["a vascular angiography study"],
        "chest": ["the thoracic region"], "head": ["the cranium"],
        "abdomen": ["the abdominopelvic region"], "limb": ["an extremity"],
    },
}
# "varied": the alignment phrasings and more (synonyms, question forms), still disjoint from the probe
# wordings: a model that learned "is this X?" for many phrasings of X, not two, is what the held-out
# probe wording tests.
NAMES["varied"] = {
    "ct": NAMES["train"]["ct"] + ["a CT study", "a CAT scan", "a CT slice", "a CT"],
    "x-ray": NAMES["train"]["x-ray"] + ["a radiograph", "an X-ray image", "a conventional X-ray", "an x-ray picture"],
    "mri": NAMES["train"]["mri"] + ["an MRI", "an MRI study", "an MR scan", "an MR study"],
    "ultrasound": NAMES["train"]["ultrasound"] + ["an ultrasound", "an ultrasound scan", "a US image", "an echo image"],
    "angiography": NAMES["train"]["angiography"] + ["an arteriogram", "a catheter angiogram", "a DSA image", "an angiographic image"],
    "chest": NAMES["train"]["chest"] + ["the lungs", "the chest cavity", "the rib cage"],
    "head": NAMES["train"]["head"] + ["the skull", "the brain", "the head and neck"],
    "abdomen": NAMES["train"]["abdomen"] + ["the pelvis", "the belly", "the abdominal organs"],
    "limb": NAMES["train"]["limb"] + ["a leg", "an arm", "a hand, foot or joint of a limb"],
}
YES_NO_TEMPLATES = {
    "train": {"modality": ["Is this {name}?", "Is this image {name}?"],
              "region": ["Does this image show {name}?", "Is {name} shown here?"]},
    "probe": {"modality": ["Was this picture acquired as {name}?"],
              "region": ["Is the body part in view {name}?"]},
}
YES_NO_TEMPLATES["varied"] = {
    "modality": YES_NO_TEMPLATES["train"]["modality"] + [
        "Could this be {name}?", "Is this study {name}?", "Am I looking at {name}?", "Does this look like {name}?",
        "Would you call this {name}?", "Is the image shown {name}?"],
    "region": YES_NO_TEMPLATES["train"]["region"] + [
        "Is this an image of {name}?", "Does the scan include {name}?", "Is {name} visible in this image?",
        "Are we looking at {name}?", "Is {name} the area imaged?"],
}
CHOICE_NAMES = {  # the answer strings of multiple-choice questions (and of the ranking candidates)
    "ct": "ct", "x-ray": "x-ray", "mri": "mri", "ultrasound": "ultrasound", "angiography": "angiography",
    "chest": "chest", "head": "head", "abdomen": "abdomen", "limb": "limb",
}
CHOICE_TEMPLATES = {
    "train": {"modality": "Which imaging modality is this: {options}?", "region": "Which body region is shown: {options}?"},
    "probe": {"modality": "Name the imaging technique ({options}).", "region": "Name the part of the body in view ({options})."},
}
CHOICE_TEMPLATES["varied"] = {
    "modality": [CHOICE_TEMPLATES["train"]["modality"],
                 "What kind of scan is this: {options}?", "Was this image made by {options}?", "Is this image {options}?"],
    "region": [CHOICE_TEMPLATES["train"]["region"],
               "What part of the body is imaged: {options}?", "Where in the body is this: {options}?", "Does this image show {options}?"],
}
OPEN_TEMPLATES = {  # open questions: no options listed; the answer is the class name
    "train": {"modality": "What imaging modality was used?", "region": "What part of the body is shown?"},
    "probe": {"modality": "How was this image acquired?", "region": "Which anatomical region is imaged?"},
}
OPEN_TEMPLATES["varied"] = OPEN_TEMPLATES["train"]
CLASSES = {"modality": ["ct", "x-ray", "mri", "ultrasound", "angiography"], "region": ["chest", "head", "abdomen", "limb"]}


def roco_label(sample: Sample, task: str) -> str | None:
    """An ROCOv2 sample's modality / region class from its concept CUIs (None: unlabelled or ambiguous)."""
    table = MODALITY_CUIS if task == "modality" else REGION_CUIS
    concepts = sample.extra.get("concepts_manual") or sample.extra.get("concepts") or []
    found = {table[c] for c in concepts if c in table}
    return found.pop() if len(found) == 1 else None


def _check(task: str, style: str, wording: str) -> None:
    for name, value, allowed in (("task", task, TASKS), ("style", style, STYLES), ("wording", wording, WORDINGS)):
        if value not in allowed:
            raise ValueError(f"grounding questions: {name}={value!r}; allowed: {list(allowed)}")


def label_questions(
    labelled: Iterable[tuple[Sample, str]], task: str, *, style: str = "yesno", wording: str = "train",
    seed: int = 0, source: str = "grounding",
) -> SampleList:
    """(image sample, class) pairs -> closed questions about that class.

    ``yesno``: two questions per image, one whose answer is "yes" (its own class) and one "no" (a
    seeded random other class), so the majority answer has exactly half. ``choice``: one question
    per image listing every class of the task in a seeded random order; the answer is the class.
    ``open``: the same without the options in the question.
    ``wording``: "train" (alignment phrasings), "probe" (held-out phrasings) or "all".
    """
    _check(task, style, wording)
    rng = random.Random(f"{seed}:{task}:{style}:{wording}")
    wordings = ["train", "probe"] if wording == "all" else [wording]
    classes = CLASSES[task]
    out = SampleList()
    for sample, label in labelled:
        if label not in classes:
            raise ValueError(f"class {label!r} is not one of the {task} classes {classes}")
        words = rng.choice(wordings)
        base = {"task": task, "label": label, "image_id": sample.extra.get("ID") or sample.extra.get("image_name")}
        if style == "yesno":
            other = rng.choice([c for c in classes if c != label])
            pairs = [(label, "yes"), (other, "no")]
            rng.shuffle(pairs)
            for asked, answer in pairs:
                template = rng.choice(YES_NO_TEMPLATES[words][task])
                question = template.format(name=rng.choice(NAMES[words][asked]))
                extra = {**base, "asked": asked, "candidates": ["yes", "no"]}
                out.append(Sample(list(sample.images), question, answer, "closed", source, sample.split, extra, sample.image))
        else:
            options = [CHOICE_NAMES[c] for c in classes]
            rng.shuffle(options)
            if style == "choice":
                template = CHOICE_TEMPLATES[words][task]
                template = template if isinstance(template, str) else rng.choice(template)  # one: no draw (keeps old seeds' data)
                question = template.format(options=", ".join(options[:-1]) + " or " + options[-1])
            else:
                question = OPEN_TEMPLATES[words][task]
            extra = {**base, "candidates": sorted(options)}
            out.append(Sample(list(sample.images), question, CHOICE_NAMES[label], "closed", source, sample.split, extra, sample.image))
    return out


def read_roco_grounding(
    root: str | Path, split: str = "val", *, task: str = "modality", style: str = "yesno", wording: str | None = None,
    seed: int = 0, draws: int = 1, **roco_options: Any,
) -> SampleList:
    """Closed questions about ROCOv2 images from their concept labels (see the module docstring).

    ``wording`` defaults to "train" on the train split (alignment data) and "probe" elsewhere.
    ``draws``: question sets drawn per image, each with its own seed (seed, seed + 1, ...): other
    "no" classes, phrasings and option orders, instead of the same questions every epoch.
    """
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"grounding questions: draws={draws!r}; expected an integer >= 1")
    wording = wording or ("train" if split == "train" else "probe")
    images = read_roco(root, split, **roco_options)
    labelled = [(s, label) for s in images if (label := roco_label(s, task)) is not None]
    out = SampleList()
    for draw in range(draws):
        out.extend(label_questions(labelled, task, style=style, wording=wording, seed=seed + draw, source=f"roco_{task}"))
    return out


def read_vqa_rad_organ(
    root: str | Path, split: str = "train", *, style: str = "yesno", wording: str = "train", seed: int = 0,
    **vqa_options: Any,
) -> SampleList:
    """Region questions about VQA-RAD images from ``image_organ`` (one image, however many QA rows)."""
    unique: dict[str, tuple[Sample, str]] = {}
    for sample in read_vqa_rad(root, split, **vqa_options):
        organ = VQA_RAD_ORGANS.get(str(sample.extra.get("image_organ", "")).strip().upper())
        if organ is not None and sample.images[0] not in unique:
            unique[sample.images[0]] = (sample, organ)
    return label_questions(unique.values(), "region", style=style, wording=wording, seed=seed, source="vqa_rad_organ")


def majority_share(samples: Iterable[Sample]) -> float:
    """Share of the most common answer (the accuracy of always giving it)."""
    from collections import Counter

    counts = Counter(s.answer for s in samples)
    total = sum(counts.values())
    return max(counts.values()) / total if total else 0.0
