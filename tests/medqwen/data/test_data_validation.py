"""Every error path: DataError messages, skip_invalid counts, path escapes."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from medqwen.data import DataError, read_medmnist, read_roco, read_vqa_rad


def _error(root, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        read_vqa_rad(root, **kwargs)
    return info.value


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_missing_image(rad_dir, rad_row):
    root = rad_dir([rad_row(1), rad_row(7, image_name="nope.jpg")])
    err = _error(root)
    assert err.reason == "missing image" and err.row == 1 and err.row_id == 7
    assert err.field == "image_name"
    msg = str(err)
    assert "trainset.json" in msg and "row 1" in msg and "id=7" in msg and "'image_name'" in msg
    assert "nope.jpg" in msg


@pytest.mark.parametrize("overrides", [{"image_name": ""}, {"image_name": None}])
def test_absent_image_name(rad_dir, rad_row, overrides):
    assert _error(rad_dir([rad_row(1, **overrides)])).reason == "missing image"


def test_check_images_off_skips_the_existence_test(rad_dir, rad_row):
    samples = read_vqa_rad(rad_dir([rad_row(1, image_name="nope.jpg")]), check_images=False)
    assert samples[0].images[0].endswith("nope.jpg")


def test_unreadable_image_only_with_verify(rad_dir, rad_row, write_image):
    root = rad_dir([rad_row(1, image_name="junk.jpg"), rad_row(2, image_name="cut.jpg")])
    (root / "images" / "junk.jpg").write_bytes(b"not an image at all")
    good = write_image(root / "images" / "full.jpg", size=(64, 64)).read_bytes()
    (root / "images" / "cut.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    assert len(read_vqa_rad(root)) == 2  # default: existence only, nothing opened
    err = _error(root, verify_images=True)
    assert err.reason == "unreadable image" and err.row_id == 1 and "junk.jpg" in str(err)
    samples = read_vqa_rad(root, verify_images=True, skip_invalid=True)
    assert len(samples) == 0 and samples.skipped == {"unreadable image": 2}


@pytest.mark.parametrize("overrides, reason, field", [
    ({"question": "   "}, "empty question", "question"),
    ({"question": None}, "empty question", "question"),
    ({"answer": ""}, "empty answer", "answer"),
    ({"answer_type": "MAYBE"}, "unknown answer type", "answer_type"),
    ({"answer_type": None}, "unknown answer type", "answer_type"),
    ({"answer": ["yes"]}, "malformed row", "answer"),
])
def test_bad_fields(rad_dir, rad_row, overrides, reason, field):
    err = _error(rad_dir([rad_row(1), rad_row(5, **overrides)]))
    assert (err.reason, err.field, err.row, err.row_id) == (reason, field, 1, 5)
    assert f"'{field}'" in str(err) and reason in str(err)


def test_missing_key_is_reported(rad_dir, rad_row):
    row = rad_row(3)
    del row["question"]
    err = _error(rad_dir([row]))
    assert err.reason == "empty question" and "absent" in str(err)


@pytest.mark.parametrize("image_name", ["../../etc/passwd", "../trainset.json", "/etc/passwd",
                                        "sub/../../images2/a.jpg"])
def test_path_escape(rad_dir, rad_row, image_name):
    err = _error(rad_dir([rad_row(1, image_name=image_name)]), check_images=False)
    assert err.reason == "path escapes dataset root" and err.field == "image_name"


def test_absolute_path_inside_root_is_fine(rad_dir, rad_row):
    root = rad_dir([])
    inside = str(root / "images" / "b.jpg")
    samples = read_vqa_rad(rad_dir([rad_row(1, image_name=inside)]))
    assert samples[0].images == [inside]


def test_skip_invalid_counts_and_logs(rad_dir, rad_row, caplog):
    rows = [rad_row(1), rad_row(2, image_name="nope.jpg"), rad_row(3, image_name="../x.jpg"),
            rad_row(4, question=""), rad_row(5, answer=" "), rad_row(6, answer_type="?"),
            rad_row(7, image_name="nope2.jpg"), rad_row(8, image_name="b.jpg", answer="No ")]
    with caplog.at_level(logging.WARNING, logger="medqwen.data"):
        samples = read_vqa_rad(rad_dir(rows), skip_invalid=True)
    assert [s.extra["qid"] for s in samples] == [1, 8]
    assert samples[1].answer == "no"
    assert samples.skipped == {"missing image": 2, "path escapes dataset root": 1,
                               "empty question": 1, "empty answer": 1, "unknown answer type": 1}
    lines = [r.getMessage() for r in caplog.records if r.name == "medqwen.data"]
    assert len(lines) == 1
    assert "kept 2 samples, skipped 6 rows" in lines[0] and "missing image: 2" in lines[0]


def test_clean_read_logs_nothing(rad_dir, rad_row, caplog):
    with caplog.at_level(logging.INFO, logger="medqwen.data"):
        assert read_vqa_rad(rad_dir([rad_row(1)]), skip_invalid=True).skipped == {}
    assert not caplog.records


def test_malformed_json_file_is_not_skippable(tmp_path):
    (tmp_path / "trainset.json").write_text("[{not json", encoding="utf-8")
    with pytest.raises(DataError, match="malformed file"):
        read_vqa_rad(tmp_path, skip_invalid=True)


def test_non_object_rows(rad_dir, rad_row):
    root = rad_dir([rad_row(1), "oops", 3])
    assert _error(root).reason == "malformed row"
    assert read_vqa_rad(root, skip_invalid=True).skipped == {"malformed row": 2}


def test_bad_jsonl_line_is_skippable(tmp_path, write_image):
    from medqwen.data import read_pathvqa

    write_image(tmp_path / "a.jpg")
    good = '{"image": "a.jpg", "question": "q?", "answer": "yes"}'
    (tmp_path / "test.jsonl").write_text(f"{good}\n\n{{broken\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError, match="row 2.*bad JSON"):
        read_pathvqa(tmp_path, "test")
    samples = read_pathvqa(tmp_path, "test", skip_invalid=True)
    assert len(samples) == 2 and samples.skipped == {"malformed row": 1}


def test_roco_csv_errors(tmp_path, write_image):
    write_image(tmp_path / "train" / "r1.jpg")
    (tmp_path / "train_captions.csv").write_text(
        'ID,Caption\nr1,"A  CT\nscan."\nr2,Missing image.\nr3,   \n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_roco(tmp_path, "train")
    assert info.value.row == 1 and info.value.row_id == "r2" and info.value.field == "ID"
    samples = read_roco(tmp_path, "train", skip_invalid=True)
    assert [s.answer for s in samples] == ["A CT scan."]
    assert samples.skipped == {"missing image": 2}
    write_image(tmp_path / "train" / "r3.jpg")
    assert read_roco(tmp_path, "train", skip_invalid=True).skipped == {
        "missing image": 1, "empty answer": 1}
    (tmp_path / "valid_captions.csv").write_text("Id,Text\nr1,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"malformed file.*missing columns"):
        read_roco(tmp_path, "val")


def test_medmnist_unknown_label(tmp_path):
    npz = tmp_path / "tiny.npz"
    np.savez(npz, train_images=np.zeros((3, 28, 28), np.uint8),
             train_labels=np.array([[0], [2], [1]], np.uint8))
    with pytest.raises(DataError, match="unknown label") as info:
        read_medmnist(npz, class_names=["a", "b"])
    assert info.value.row == 1
    samples = read_medmnist(npz, class_names=["a", "b"], skip_invalid=True, mode="as_yes_no")
    assert samples.skipped == {"unknown label": 1} and len(samples) == 2
    with pytest.raises(ValueError, match="class_names"):
        read_medmnist(npz)  # no built-in names for "tiny"


def test_medmnist_rejects_multilabel_and_bad_mode(tmp_path):
    npz = tmp_path / "chestmnist.npz"
    np.savez(npz, train_images=np.zeros((2, 28, 28), np.uint8),
             train_labels=np.zeros((2, 14), np.uint8))
    with pytest.raises(ValueError, match="multi-label"):
        read_medmnist(npz, class_names=[str(i) for i in range(14)])
    with pytest.raises(ValueError, match="mode"):
        read_medmnist(npz, mode="as_captions", class_names=["a"])
