"""Readers on the real data in ../shared/data (counts come from each SOURCE.md)."""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

from medqwen.data import (
    DataError, load_image, read_iu_xray, read_medmnist, read_roco, read_slake, read_vqa_rad,
)


# ---------------------------------------------------------------- VQA-RAD
@pytest.mark.parametrize("split, n, closed, open_", [("train", 3064, 1823, 1241),
                                                      ("test", 451, 272, 179)])
def test_vqa_rad_counts(data_dir, split, n, closed, open_):
    samples = read_vqa_rad(data_dir("vqa_rad"), split)
    assert len(samples) == n
    assert samples.skipped == {}
    assert Counter(s.answer_type for s in samples) == {"closed": closed, "open": open_}
    assert {s.source for s in samples} == {"vqa_rad"} and {s.split for s in samples} == {split}


def test_vqa_rad_rows_are_normalised(data_dir):
    root = data_dir("vqa_rad")
    samples = read_vqa_rad(root, "train")
    by_qid = {s.extra["qid"]: s for s in samples}
    # The two "CLOSED " rows (trailing space) are read as closed.
    assert by_qid[3371].answer_type == "closed" and by_qid[3371].answer == "maybe"
    assert by_qid[3372].answer_type == "closed"
    # Integer answers in the JSON become strings; mixed case is lowercased.
    assert by_qid[2392].answer == "4"
    assert all(s.answer == s.answer.lower().strip() for s in samples)
    assert not any("\t" in s.answer or "  " in s.answer for s in samples)
    assert {"yes", "no"} <= {s.answer for s in samples}
    # Paths are absolute, inside images/, and exist; the rest of the row is kept.
    assert all(os.path.isabs(s.images[0]) and os.path.isfile(s.images[0]) for s in samples)
    assert {s.images[0] for s in samples} <= {str(p) for p in (root / "images").iterdir()}
    assert set(by_qid[1].extra) == {"qid", "image_organ", "question_type", "phrase_type"}


def test_vqa_rad_direct_file_and_verify(data_dir):
    root = data_dir("vqa_rad")
    samples = read_vqa_rad(root / "testset.json", "test", verify_images=True)
    assert len(samples) == 451
    assert load_image(samples[0]).mode == "RGB"


def test_vqa_rad_has_no_val_split(data_dir):
    with pytest.raises(ValueError, match="unknown split"):
        read_vqa_rad(data_dir("vqa_rad"), "val")


# ---------------------------------------------------------------- SLAKE
def test_slake_strict_stops_at_the_empty_answer(data_dir):
    # train.json has one English row (qid 1622) with answer "".
    with pytest.raises(DataError) as info:
        read_slake(data_dir("slake_annotations"), "train", check_images=False)
    err = info.value
    assert err.reason == "empty answer" and err.field == "answer" and err.row_id == 1622
    assert "train.json" in str(err) and "1622" in str(err) and "'answer'" in str(err)


@pytest.mark.parametrize("split, n, closed, open_, skipped", [
    ("train", 4918, 1943, 2975, {"empty answer": 1}),
    ("validate", 1053, 422, 631, {}),
    ("test", 1061, 416, 645, {}),
])
def test_slake_english_filter(data_dir, split, n, closed, open_, skipped):
    samples = read_slake(data_dir("slake_annotations"), split, check_images=False,
                         skip_invalid=True)
    assert len(samples) == n and samples.skipped == skipped
    assert Counter(s.answer_type for s in samples) == {"closed": closed, "open": open_}
    assert {s.extra["q_lang"] for s in samples} == {"en"}
    assert {s.split for s in samples} == {"val" if split == "validate" else split}
    imgs = str(data_dir("slake_annotations") / "imgs")
    assert all(s.images[0].startswith(imgs + os.sep) and s.images[0].endswith("source.jpg")
               for s in samples)
    s = samples[0]
    assert {"qid", "img_id", "location", "modality", "content_type", "triple"} <= set(s.extra)


def test_slake_languages(data_dir):
    root = data_dir("slake_annotations")
    zh = read_slake(root, "test", q_lang="zh", check_images=False)
    both = read_slake(root, "test", q_lang=None, check_images=False)
    assert len(zh) == 1033 and len(both) == 2094
    assert "  " not in " ".join(s.answer for s in both)  # "Transverse  Plane" collapsed


def test_slake_default_checks_images(data_dir):
    # Our copy has annotations only, so the default (check_images=True) fails.
    with pytest.raises(DataError, match="missing image"):
        read_slake(data_dir("slake_annotations"), "test")


# ---------------------------------------------------------------- ROCOv2
@pytest.mark.parametrize("split, n", [("train", 600), ("val", 100)])
def test_roco_sample(data_dir, split, n):
    root = data_dir("rocov2_sample")
    samples = read_roco(root, split)
    assert len(samples) == n and samples.skipped == {}
    folder = root / ("train" if split == "train" else "valid")
    assert all(os.path.dirname(s.images[0]) == str(folder) for s in samples)
    assert all(s.answer_type == "open" and s.question == "Describe the image." for s in samples)
    assert all(s.answer == s.answer.strip() and s.answer for s in samples)
    assert any(any(c.isupper() for c in s.answer) for s in samples)  # case kept
    assert all(s.extra["concepts"] and s.extra["ID"] for s in samples)
    assert all(s.extra["concepts"][0].startswith("C") for s in samples)


def test_roco_strips_unicode_whitespace(data_dir):
    samples = read_roco(data_dir("rocov2_sample"), "train")
    caption = next(s.answer for s in samples if s.answer.startswith("T1 MRI with early"))
    assert caption == "T1 MRI with early phase contrast. Fifteen weeks post-RE."


# ---------------------------------------------------------------- IU X-Ray
def test_iu_xray_reports(data_dir):
    root = data_dir("iu_xray_reports")
    with pytest.raises(DataError, match="empty answer"):
        read_iu_xray(root)  # 28 reports have neither findings nor impression
    samples = read_iu_xray(root / "reports.jsonl", skip_invalid=True)
    assert len(samples) == 3927 and samples.skipped == {"empty answer": 28}
    first = samples[0]
    assert first.images == [] and first.answer_type == "open" and first.split == "all"
    assert first.answer.startswith("Findings: The cardiac silhouette")
    assert "Impression: Normal chest x-XXXX." in first.answer
    assert first.extra["uid"] == "CXR1" and len(first.extra["image_ids"]) == 2
    only_impression = next(s for s in samples if s.extra["uid"] == "CXR3")
    assert only_impression.answer.startswith("Impression: ")


def test_iu_xray_hash_split_is_a_partition(data_dir):
    root = data_dir("iu_xray_reports")
    parts = {sp: read_iu_xray(root, sp, skip_invalid=True) for sp in ("train", "val", "test")}
    uids = [s.extra["uid"] for part in parts.values() for s in part]
    assert len(uids) == len(set(uids)) == 3927
    assert 0.6 < len(parts["train"]) / 3927 < 0.8
    again = read_iu_xray(root, "val", skip_invalid=True)
    assert [s.extra["uid"] for s in again] == [s.extra["uid"] for s in parts["val"]]


def test_iu_xray_with_image_root_requires_files(data_dir, tmp_path):
    with pytest.raises(DataError, match="missing image"):
        read_iu_xray(data_dir("iu_xray_reports"), image_root=tmp_path)


# ---------------------------------------------------------------- PneumoniaMNIST
def test_pneumoniamnist_as_labels(data_dir):
    npz = data_dir("pneumoniamnist") / "pneumoniamnist.npz"
    train = read_medmnist(npz, "train")
    assert len(train) == 3882
    assert Counter(s.answer for s in train) == {"pneumonia": 3494, "normal": 388}
    assert all(s.answer_type == "closed" and s.images == [] for s in train)
    s = train[0]
    assert s.extra["label"] in (0, 1) and s.extra["class_name"] == s.answer
    assert "normal" in s.question and "pneumonia" in s.question
    assert isinstance(s.image, np.ndarray) and s.image.shape == (28, 28)
    img = load_image(s)
    assert img.mode == "RGB" and img.size == (28, 28)
    assert [len(read_medmnist(npz, sp)) for sp in ("val", "test")] == [524, 624]


def test_pneumoniamnist_as_yes_no_balanced(data_dir):
    npz = data_dir("pneumoniamnist") / "pneumoniamnist.npz"
    for split, n in [("train", 776), ("val", 270), ("test", 468)]:
        samples = read_medmnist(npz, split, mode="as_yes_no", seed=3)
        assert len(samples) == n
        assert Counter(s.answer for s in samples) == {"yes": n // 2, "no": n // 2}
        assert {s.question for s in samples} == {"Is there evidence of pneumonia?"}
        assert all((s.answer == "yes") == (s.extra["label"] == 1) for s in samples)
    a = read_medmnist(npz, "train", mode="as_yes_no", seed=3)
    b = read_medmnist(npz, "train", mode="as_yes_no", seed=3)
    c = read_medmnist(npz, "train", mode="as_yes_no", seed=4)
    ids = lambda xs: [s.extra["index"] for s in xs]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_pneumoniamnist_yes_no_unbalanced_and_custom_names(data_dir):
    npz = data_dir("pneumoniamnist") / "pneumoniamnist.npz"
    natural = read_medmnist(npz, "test", mode="as_yes_no", balance=False)
    assert Counter(s.answer for s in natural) == {"yes": 390, "no": 234}
    named = read_medmnist(npz, "test", class_names={0: "Healthy", 1: "Pneumonia"},
                          source="pneumo", yes_no_questions={"Pneumonia": "Pneumonia?"},
                          mode="as_yes_no")
    assert {s.question for s in named} == {"Pneumonia?"} and named[0].source == "pneumo"
    labels = read_medmnist(npz, "test", class_names=["Healthy", "Pneumonia"])
    assert {s.answer for s in labels} == {"healthy", "pneumonia"}
