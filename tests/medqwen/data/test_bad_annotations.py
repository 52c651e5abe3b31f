"""Annotation files and reader options that are wrong are named: encoding, repeated ids, unknown options."""
from __future__ import annotations

import logging

import pytest

from medqwen.data import DataError, read_dataset, read_roco, read_vqa_rad
from medqwen.data.registry import UnknownOptionError, reader_options


def test_a_latin1_annotation_file_is_named(rad_dir, rad_row):
    root = rad_dir([rad_row(1)])
    (root / "trainset.json").write_bytes('[{"question": "Is the café open?"}]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"trainset\.json: malformed file \(not UTF-8 text: byte 0xe9 at line 1"):
        read_vqa_rad(root)


def test_a_latin1_caption_csv_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train_captions.csv").write_bytes("ID,Caption\nROCO_1,Une radiographie du côté\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train_captions\.csv: malformed file \(not UTF-8 text: byte 0xf4 at line 2"):
        read_roco(tmp_path, "train", check_images=False)


def test_repeated_ids_are_warned_about_by_name(rad_dir, rad_row, caplog):
    root = rad_dir([rad_row(1), rad_row(2), rad_row(1, question="Is it the brain?"), rad_row(3)])
    with caplog.at_level(logging.WARNING, logger="medqwen.data"):
        samples = read_vqa_rad(root)
    assert len(samples) == 4  # kept: a repeated id may be deliberate
    assert "1 ids in field 'qid' occur in more than one row (1 at rows [0, 2])" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medqwen.data"):
        read_vqa_rad(rad_dir([rad_row(1), rad_row(2)]))
    assert "more than one row" not in caplog.text


def test_unknown_reader_options_are_named_with_the_allowed_ones(rad_dir, rad_row):
    root = rad_dir([rad_row(1)])
    with pytest.raises(UnknownOptionError) as err:
        read_dataset("vqa_rad", root, "train", foo=1, skip_invalids=True)
    assert "reader 'vqa_rad': unknown option(s) ['foo', 'skip_invalids'] (did you mean 'skip_invalid'?)" in str(err.value)
    assert "allowed: ['answer_type', 'check_images', 'image_dir', 'skip_invalid', 'verify_images']" in str(err.value)
    with pytest.raises(ValueError, match=r"unknown dataset 'vqa_radd' \(did you mean 'vqa_rad'\?\)"):
        read_dataset("vqa_radd", root)


def test_options_handed_on_to_another_reader_count():
    assert {"style", "wording", "image_dir", "verify_images"} <= reader_options(read_dataset.__globals__["READERS"]["vqa_rad_organ"])
    assert reader_options(read_dataset.__globals__["READERS"]["synthetic"]) == {"n_images", "seed", "test_fraction"}


def test_vqa_rad_answer_type_option_keeps_closed_or_open_questions(rad_dir, rad_row):
    root = rad_dir([rad_row(1, answer="yes", answer_type="CLOSED"), rad_row(2, answer="liver", answer_type="OPEN "),
                    rad_row(3, answer="no", answer_type="CLOSED")])
    assert [s.answer for s in read_vqa_rad(root, answer_type="closed")] == ["yes", "no"]
    assert [s.answer for s in read_dataset("vqa_rad", root, answer_type="open")] == ["liver"]
    assert len(read_vqa_rad(root)) == 3
    with pytest.raises(ValueError, match="answer_type='yes'"):
        read_vqa_rad(root, answer_type="yes")
