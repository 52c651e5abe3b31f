"""Formats we have no real copy of, on tiny hand-written fixtures."""
from __future__ import annotations

import sys

import pytest

from medqwen.data import (
    DataError, read_hf, read_llava_med, read_omnimedvqa, read_pathvqa, strip_image_token,
)


# ---------------------------------------------------------------- PathVQA
def _pathvqa_rows():
    return [
        {"image": "images/train/train_0001.jpg", "question": "Is this  a  granuloma?",
         "answer": "Yes", "id": "p1"},
        {"image": "images/train/train_0002.jpg", "question": "What is present?",
         "answer": "Multinucleated  Giant Cells", "id": "p2", "magnification": "40x"},
        {"image": "images/train/train_0002.jpg", "question": "Is it benign?", "answer": "maybe",
         "answer_type": "CLOSED", "id": "p3"},
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_pathvqa(tmp_path, write_image, write_json, write_jsonl, fmt):
    write_image(tmp_path / "images/train/train_0001.jpg")
    write_image(tmp_path / "images/train/train_0002.jpg")
    (write_jsonl if fmt == "jsonl" else write_json)(tmp_path / f"train.{fmt}", _pathvqa_rows())
    samples = read_pathvqa(tmp_path, "train")
    assert [s.answer for s in samples] == ["yes", "multinucleated giant cells", "maybe"]
    assert [s.answer_type for s in samples] == ["closed", "open", "closed"]
    assert samples[0].question == "Is this a granuloma?"
    assert samples[0].images == [str(tmp_path / "images/train/train_0001.jpg")]
    assert samples[1].extra == {"id": "p2", "magnification": "40x"}
    assert {s.source for s in samples} == {"pathvqa"}


def test_pathvqa_validation_split_name_and_image_dir(tmp_path, write_image, write_jsonl):
    write_image(tmp_path / "imgs" / "x.jpg")
    write_jsonl(tmp_path / "ann" / "validation.jsonl",
                [{"image": "x.jpg", "question": "q?", "answer": "no"}])
    samples = read_pathvqa(tmp_path / "ann", "val", image_dir=tmp_path / "imgs")
    assert len(samples) == 1 and samples[0].split == "val"


# ---------------------------------------------------------------- OmniMedVQA
def _omni_row(**overrides):
    row = {"dataset": "Chest CT Scan", "question_id": "q1", "question_type": "Modality Recognition",
           "question": "What imaging modality is this?", "gt_answer": "CT",
           "image_path": "Images/Chest CT Scan/a.png", "option_A": "MRI", "option_B": "CT",
           "option_C": "X-Ray", "option_D": "Ultrasound", "modality_type": "CT"}
    row.update(overrides)
    return row


@pytest.fixture
def omni_root(tmp_path, write_image, write_json):
    root = tmp_path / "OmniMedVQA"
    write_image(root / "Images/Chest CT Scan/a.png")
    write_image(root / "Images/Other/b.png")
    # Two options only, and the one upstream row that says "modality".
    two = _omni_row(question_id="q2", gt_answer="No", option_A="Yes", option_B="No",
                    option_C=None, option_D=None, modality="CT")
    del two["modality_type"]
    write_json(root / "QA_information/Open-access/Chest CT Scan.json", [_omni_row(), two])
    write_json(root / "QA_information/Restricted-access/Other.json", [
        _omni_row(question_id="q3", image_path="Images/Other/b.png", gt_answer="x-ray"),
    ])
    return root


def test_omnimedvqa_file(omni_root):
    samples = read_omnimedvqa(omni_root / "QA_information/Open-access/Chest CT Scan.json")
    s = samples[0]
    assert s.images == [str(omni_root / "Images/Chest CT Scan/a.png")]  # relative to release root
    assert s.answer == "ct" and s.answer_type == "closed" and s.split == "test"
    assert s.question == ("What imaging modality is this?\n"
                          "Options: A. MRI; B. CT; C. X-Ray; D. Ultrasound")
    assert s.extra["options"] == {"A": "MRI", "B": "CT", "C": "X-Ray", "D": "Ultrasound"}
    assert s.extra["answer_letter"] == "B" and s.extra["question_id"] == "q1"
    assert s.extra["modality_type"] == "CT" and s.extra["question_type"] == "Modality Recognition"
    two = samples[1]
    assert two.extra["options"] == {"A": "Yes", "B": "No"} and two.answer == "no"
    assert two.extra["modality_type"] == "CT" and "modality" not in two.extra


def test_omnimedvqa_folder_and_plain_question(omni_root):
    samples = read_omnimedvqa(omni_root, options_in_question=False)
    assert [s.extra["question_id"] for s in samples] == ["q1", "q2", "q3"]
    assert samples[0].question == "What imaging modality is this?"
    assert samples[2].extra["answer_letter"] == "C"  # "x-ray" matches "X-Ray"


def test_omnimedvqa_answer_not_in_options(tmp_path, write_image, write_json):
    write_image(tmp_path / "Images/a.png")
    f = write_json(tmp_path / "qa.json", [_omni_row(image_path="Images/a.png", gt_answer="PET")])
    with pytest.raises(DataError, match="answer not in options") as info:
        read_omnimedvqa(f)
    assert info.value.row_id == "q1" and info.value.field == "gt_answer"
    assert read_omnimedvqa(f, skip_invalid=True).skipped == {"answer not in options": 1}


# ---------------------------------------------------------------- LLaVA-Med
def _llava_rows():
    return [
        {"id": "PMC1_f1", "image": "figs/a.jpg", "domain": {"ct": True},
         "conversations": [
             {"from": "human", "value": "<image>\nWhat is shown in this  image?"},
             {"from": "gpt", "value": "An axial CT.\n\n\n- mass   in liver\n- no ascites"},
             {"from": "human", "value": "Is it malignant? <image>"},
             {"from": "gpt", "value": "Possibly."}]},
        {"id": "text_only", "conversations": [
            {"from": "human", "value": "Define pneumothorax."},
            {"from": "gpt", "value": "Air in the pleural space."}]},
    ]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_llava_med(tmp_path, write_image, write_json, write_jsonl, fmt):
    write_image(tmp_path / "figs/a.jpg")
    f = (write_json if fmt == "json" else write_jsonl)(tmp_path / f"instruct.{fmt}", _llava_rows())
    samples = read_llava_med(f)
    assert len(samples) == 3
    a, b, c = samples
    assert a.question == "What is shown in this image?" and b.question == "Is it malignant?"
    assert a.answer == "An axial CT.\n\n- mass in liver\n- no ascites"  # layout kept
    assert a.images == b.images == [str(tmp_path / "figs/a.jpg")]
    assert (a.extra["turn"], b.extra["turn"]) == (0, 1)
    assert a.extra["id"] == "PMC1_f1" and a.extra["domain"] == {"ct": True}
    assert c.images == [] and c.answer == "Air in the pleural space."
    assert all(s.answer_type == "open" and s.source == "llava_med" for s in samples)


def test_llava_med_bad_conversations(tmp_path, write_jsonl):
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"id": "odd", "conversations": [{"from": "human", "value": "hi"}]},
        {"id": "roles", "conversations": [{"from": "gpt", "value": "a"},
                                          {"from": "human", "value": "q"}]},
        {"id": "empty_q", "conversations": [{"from": "human", "value": "<image>\n"},
                                            {"from": "gpt", "value": "a"}]},
        {"id": "ok", "conversations": [{"from": "user", "value": "q?"},
                                       {"from": "assistant", "value": "a"}]},
    ])
    with pytest.raises(DataError, match=r"row 0 \(id='odd'\): field 'conversations'"):
        read_llava_med(f)
    samples = read_llava_med(f, skip_invalid=True)
    assert [s.extra["id"] for s in samples] == ["ok"]
    assert samples.skipped == {"malformed row": 2, "empty question": 1}


def test_strip_image_token():
    assert strip_image_token("<image>\nWhat?") == "What?"
    assert strip_image_token("What? <image>") == "What?"
    assert strip_image_token("A <image> B") == "A B"


# ---------------------------------------------------------------- Hugging Face
def test_read_hf_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        read_hf("hf://flaviagiammarino/vqa-rad", "test")


class _FakeDatasets:
    """Stands in for the `datasets` package: no network in tests."""

    def __init__(self, rows=None, error=None):
        self.rows, self.error = rows, error

    def load_dataset(self, dataset_id, split, **kwargs):
        if self.error:
            raise self.error
        return self.rows


def test_read_hf_load_failure_is_a_runtime_error(monkeypatch):
    fake = _FakeDatasets(error=ConnectionError("offline"))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(RuntimeError, match="could not load Hugging Face dataset 'org/x'.*offline"):
        read_hf("hf://org/x", "test")


def test_read_hf_maps_fields(monkeypatch):
    from PIL import Image

    img = Image.new("L", (4, 4))
    rows = [{"image": img, "question": "Is it normal? ", "answer": "Yes", "organ": "lung"},
            {"image": img, "question": "", "answer": "ct"}]
    monkeypatch.setitem(sys.modules, "datasets", _FakeDatasets(rows=rows))
    samples = read_hf("org/path-vqa", "validation", skip_invalid=True)
    assert len(samples) == 1 and samples.skipped == {"empty question": 1}
    s = samples[0]
    assert (s.question, s.answer, s.answer_type, s.source, s.split) == (
        "Is it normal?", "yes", "closed", "path-vqa", "val")
    assert s.image is img and s.images == [] and s.extra == {"organ": "lung"}


# ---------------------------------------------------------------- MedMNIST (synthetic)
def test_medmnist_resolution_suffix_and_rgb(tmp_path):
    import numpy as np

    from medqwen.data import load_image, read_medmnist

    npz = tmp_path / "pneumoniamnist_64.npz"
    np.savez(npz, test_images=np.full((4, 64, 64, 3), 7, np.uint8),
             test_labels=np.array([[0], [1], [1], [1]], np.uint8))
    samples = read_medmnist(npz, "test", source="pneumo64")
    assert [s.answer for s in samples] == ["normal", "pneumonia", "pneumonia", "pneumonia"]
    assert samples[0].source == "pneumo64"
    assert load_image(samples[0]).getpixel((0, 0)) == (7, 7, 7)
    yes_no = read_medmnist(npz, "test", mode="as_yes_no")
    assert sorted(s.answer for s in yes_no) == ["no", "yes"]
