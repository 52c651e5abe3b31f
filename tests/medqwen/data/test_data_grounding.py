"""Closed questions from image labels (alignment data and grounding probe sets)."""
from __future__ import annotations

import csv

import pytest

from medqwen.data import read_dataset
from medqwen.data.grounding import (
    CLASSES, NAMES, YES_NO_TEMPLATES, label_questions, majority_share, read_roco_grounding, roco_label,
)
from medqwen.data.schema import Sample


def _roco(tmp_path, write_image, split_dir, rows):
    """A tiny ROCOv2 folder: rows of (id, concepts) with one image each."""
    prefix = {"train": "train", "valid": "valid"}[split_dir]
    with open(tmp_path / f"{prefix}_captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Caption"])
        for image_id, _ in rows:
            w.writerow([image_id, "a caption"])
            write_image(tmp_path / split_dir / f"{image_id}.jpg")
    with open(tmp_path / f"{prefix}_concepts_manual.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "CUIs"])
        for image_id, cuis in rows:
            w.writerow([image_id, cuis])
    return tmp_path


def _sample(concepts):
    return Sample(["x.jpg"], "Describe the image.", "c", "open", "roco", "val", {"concepts_manual": concepts})


def test_roco_label_from_concepts():
    assert roco_label(_sample(["C0040405", "C0817096"]), "modality") == "ct"
    assert roco_label(_sample(["C0040405", "C0817096"]), "region") == "chest"
    assert roco_label(_sample(["C1306645", "C0000726", "C0030797"]), "region") == "abdomen"  # abdomen + pelvis = one class
    assert roco_label(_sample(["C1306645", "C0817096", "C0030797"]), "region") is None  # two regions: ambiguous
    assert roco_label(_sample(["C0205129"]), "modality") is None  # no modality concept


def test_yes_no_questions_are_balanced_and_name_the_asked_class():
    images = [(_sample([]), c) for c in ["ct", "mri", "x-ray", "ultrasound", "angiography", "ct"]]
    questions = label_questions(images, "modality", style="yesno", wording="probe", seed=3)
    assert len(questions) == 12 and majority_share(questions) == 0.5
    for q in questions:
        assert q.extra["candidates"] == ["yes", "no"] and q.answer_type == "closed"
        assert (q.answer == "yes") == (q.extra["asked"] == q.extra["label"])
        assert any(name in q.question for name in NAMES["probe"][q.extra["asked"]])
    assert label_questions(images, "modality", seed=3)[0].question == label_questions(images, "modality", seed=3)[0].question


def test_choice_questions_list_every_class():
    images = [(_sample([]), c) for c in CLASSES["region"]]
    questions = label_questions(images, "region", style="choice", wording="train")
    for q, (_, label) in zip(questions, images):
        assert q.answer == label and sorted(q.extra["candidates"]) == sorted(CLASSES["region"])
        assert all(c in q.question for c in CLASSES["region"])


@pytest.mark.parametrize("training", ["train", "varied"])
def test_probe_wordings_never_occur_in_training_wordings(training):
    for task in ("modality", "region"):
        for cls in CLASSES[task]:
            assert not set(NAMES["probe"][cls]) & set(NAMES[training][cls])
            # the added phrasings bring no probe word the original ones did not have ("tomography", "cranium")
            words = lambda names: {w for n in names for w in n.lower().replace(",", "").split()} - {"a", "an", "the", "or"}  # noqa: E731
            assert words(NAMES[training][cls]) & words(NAMES["probe"][cls]) <= words(NAMES["train"][cls]), cls
        train_templates = {t.split("{")[0] for t in YES_NO_TEMPLATES[training][task]}
        assert not train_templates & {t.split("{")[0] for t in YES_NO_TEMPLATES["probe"][task]}


def test_varied_wording_extends_the_training_wording():
    for cls, names in NAMES["train"].items():
        assert set(names) < set(NAMES["varied"][cls])
    images = [(_sample([]), c) for c in CLASSES["modality"]] * 20
    questions = label_questions(images, "modality", style="yesno", wording="varied", seed=1)
    assert len({q.question for q in questions}) > 4 * len(CLASSES["modality"])
    assert all(any(n in q.question for n in NAMES["varied"][q.extra["asked"]]) for q in questions)


def test_draws_ask_each_image_again_with_other_negatives(tmp_path, write_image):
    root = _roco(tmp_path, write_image, "train", [(f"t{i}", cui) for i, cui in enumerate(["C0040405", "C0024485"] * 4)])
    one = read_roco_grounding(root, "train", task="modality")
    four = read_roco_grounding(root, "train", task="modality", draws=4)
    assert [q.question for q in four[: len(one)]] == [q.question for q in one]  # the first draw is the old data
    assert len(four) == 4 * len(one) and majority_share(four) == 0.5
    negatives = {(q.extra["image_id"], q.extra["asked"]) for q in four if q.answer == "no"}
    assert len(negatives) > len(one) // 2  # more than one "no" class per image
    with pytest.raises(ValueError, match="draws=0"):
        read_roco_grounding(root, "train", draws=0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="style='essay'"):
        label_questions([], "modality", style="essay")
    with pytest.raises(ValueError, match="class 'pet'"):
        label_questions([(_sample([]), "pet")], "modality")


def test_roco_grounding_reader_on_a_tiny_folder(tmp_path, write_image):
    root = _roco(tmp_path, write_image, "valid", [("v1", "C0040405;C0817096"), ("v2", "C0024485"), ("v3", "C0205129")])
    questions = read_dataset("roco_grounding", root, "val", task="modality")
    assert len(questions) == 4  # v3 has no modality label
    assert {q.extra["label"] for q in questions} == {"ct", "mri"}
    assert all(q.images[0].endswith(f"{q.extra['image_id']}.jpg") for q in questions)
    region = read_roco_grounding(root, "val", task="region", style="choice")
    assert [q.answer for q in region] == ["chest"]


def test_vqa_rad_organ_one_question_pair_per_image(rad_dir, rad_row):
    root = rad_dir([rad_row(1), rad_row(2, question="Is it normal?"), rad_row(3, image_name="b.jpg", image_organ="CHEST")])
    questions = read_dataset("vqa_rad_organ", root, "train")
    assert len(questions) == 4
    assert {(q.extra["label"], q.images[0].endswith("a.jpg")) for q in questions if q.answer == "yes"} == {("head", True), ("chest", False)}


def test_real_probe_sets_are_disjoint_from_training_images(data_dir):
    roco = data_dir("rocov2_sample")
    probe = read_roco_grounding(roco, "val", task="modality")
    train = read_roco_grounding(roco, "train", task="modality")
    assert len(probe) == 194 and majority_share(probe) == 0.5
    assert not {q.images[0] for q in probe} & {q.images[0] for q in train}


def test_open_questions_do_not_list_the_options():
    images = [(_sample([]), c) for c in CLASSES["modality"]]
    for q, (_, label) in zip(label_questions(images, "modality", style="open"), images):
        assert q.answer == label and not any(c in q.question.lower() for c in ("mri", "ultrasound", "angiography"))
        assert sorted(q.extra["candidates"]) == sorted(CLASSES["modality"])
