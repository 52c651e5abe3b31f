"""Sample schema, normalisation and image loading."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medqwen.data import (
    DataError, Sample, SampleList, load_image, normalize_answer, normalize_text,
)


def _sample(**kw) -> Sample:
    base = dict(images=[], question="q?", answer="a", answer_type="open", source="t", split="train")
    base.update(kw)
    return Sample(**base)


@pytest.mark.parametrize("raw, expected", [
    ("  Yes ", "yes"),
    ("Heart \tlungs", "heart lungs"),          # VQA-RAD uses tabs inside answers
    ("Transverse  Plane", "transverse plane"),  # SLAKE double space
    ("\u2009T1\xa0MRI\n", "t1 mri"),            # thin / no-break spaces (ROCO)
    (4, "4"),                                   # VQA-RAD integer answers
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_text_keeps_case_and_optionally_lines():
    assert normalize_text("  A  CT\n scan ") == "A CT scan"
    assert normalize_text("One.\n\n\n\n-  two \n- three\n", keep_newlines=True) == \
        "One.\n\n- two\n- three"


def test_sample_rejects_unknown_answer_type():
    with pytest.raises(ValueError, match="answer_type"):
        _sample(answer_type="CLOSED")


def test_sample_equality_ignores_in_memory_image():
    a = _sample(image=np.zeros((2, 2), np.uint8))
    b = _sample(image=np.ones((2, 2), np.uint8))
    assert a == b and "image=" not in repr(a).replace("images=", "")


def test_sample_list_merge():
    a = SampleList([_sample()], skipped={"empty answer": 1})
    a.merge(SampleList([_sample(), _sample()], skipped={"empty answer": 2, "missing image": 1}))
    assert len(a) == 3 and a.skipped == {"empty answer": 3, "missing image": 1}
    assert isinstance(a, list)


def test_data_error_message_without_row():
    err = DataError("malformed file", file="x.json", detail="bad")
    assert str(err) == "x.json: malformed file (bad)"


def test_load_image_from_path(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (5, 3), 77).save(path)
    img = load_image(_sample(images=[str(path)]))
    assert img.mode == "RGB" and img.size == (5, 3) and img.getpixel((0, 0)) == (77, 77, 77)


def test_load_image_16bit_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(arr).save(path)
    img = load_image(_sample(images=[str(path)]))
    assert img.getpixel((0, 0)) == (0, 0, 0) and img.getpixel((1, 1)) == (255, 255, 255)
    assert 0 < img.getpixel((1, 0))[0] < 255


@pytest.mark.parametrize("arr", [
    np.full((28, 28), 9, np.uint8),
    np.full((28, 28, 1), 9, np.uint8),
    np.full((28, 28, 3), 9, np.uint8),
    np.full((28, 28), 9 / 255, np.float32),
])
def test_load_image_from_array(arr):
    img = load_image(_sample(image=arr))
    assert img.mode == "RGB" and img.size == (28, 28) and img.getpixel((3, 3)) == (9, 9, 9)


def test_load_image_errors():
    with pytest.raises(ValueError, match="text-only"):
        load_image(_sample())
    with pytest.raises(ValueError, match="shape"):
        load_image(_sample(image=np.zeros((2, 2, 5))))


def test_load_image_prefers_in_memory_pil():
    pil = Image.new("L", (2, 2), 5)
    assert load_image(_sample(image=pil, images=["/nonexistent.png"])).getpixel((0, 0)) == (5, 5, 5)
