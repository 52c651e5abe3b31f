"""Bad images are named before anything trains: header check, full decode, pixel limit, one loader."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from medqwen.data import ImageLoadError, Sample, load_image, open_image
from medqwen.data.images import MAX_LISTED, bad_image_message, find_bad_images
from medqwen.data.schema import MAX_IMAGE_PIXELS, check_image_header


def _png_claiming_size(path, width: int, height: int):
    """A small PNG whose header claims width x height: PIL reads the size without decoding pixels."""
    Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def images(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "good.jpg")  # noise: the cut lands in the pixel data, past the header
    full = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    return tmp_path


def _sample(path, qid):
    return Sample([str(path)], "Is there a lesion?", "yes", "closed", "t", "train", {"qid": qid})


def test_header_check_finds_empty_and_non_images_without_decoding(images):
    check_image_header(images / "good.jpg")
    check_image_header(images / "cut.jpg")  # a truncated file has an intact header: the decode pass finds it
    with pytest.raises(ImageLoadError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        check_image_header(images / "empty.jpg")
    with pytest.raises(ImageLoadError, match=r"text\.jpg: not an image file"):
        check_image_header(images / "text.jpg")
    with pytest.raises(ImageLoadError, match=r"gone\.jpg: no such file"):
        check_image_header(images / "gone.jpg")


def test_every_bad_image_is_named_with_its_sample_id(images):
    samples = [_sample(images / n, q) for q, n in enumerate(["good.jpg", "cut.jpg", "empty.jpg", "text.jpg", "good.jpg"])]
    bad = find_bad_images(samples)
    assert [(b.index, b.sample_id) for b in bad] == [(1, 1), (2, 2), (3, 3)]
    assert "cut.jpg: unreadable image" in bad[0].message and "empty.jpg" in bad[1].message
    assert [b.index for b in find_bad_images(samples, decode=None)] == [2, 3]  # header only: the truncated one passes
    message = bad_image_message(bad, len(samples), "stage 's' data[0]", "set skip_invalid")
    assert message.startswith("stage 's' data[0]: 3 of 5 samples have an image that cannot be used:")
    assert "sample 1 (id=1): " in message and message.endswith("set skip_invalid")


def test_a_long_list_names_the_first_ten(images):
    samples = [_sample(images / "empty.jpg", i) for i in range(MAX_LISTED + 5)]
    message = bad_image_message(find_bad_images(samples), len(samples), "data[0]", "hint")
    assert message.count("empty file") == MAX_LISTED and "... and 5 more" in message


def test_each_file_is_decoded_once(images):
    calls = []
    samples = [_sample(images / "good.jpg", i) for i in range(4)]
    assert find_bad_images(samples, decode=calls.append) == []
    assert len(calls) == 1


def test_huge_images_are_refused_by_name_before_decoding(tmp_path):
    bomb = _png_claiming_size(tmp_path / "bomb.png", 14000, 14000)  # PIL's own DecompressionBombError size
    with pytest.raises(ImageLoadError, match=r"bomb\.png: image too large to decode safely .* at most 50,000,000 pixels"):
        open_image(bomb)
    big = _png_claiming_size(tmp_path / "big.png", 8000, 7000)  # under PIL's limit, over ours
    assert 8000 * 7000 > MAX_IMAGE_PIXELS
    for check in (open_image, check_image_header):
        with pytest.raises(ImageLoadError, match=r"big\.png: image is 8000 x 7000 = 56,000,000 pixels, more than the limit"):
            check(big)
    assert "bomb.png" in find_bad_images([_sample(bomb, 1)])[0].message


def test_a_16_bit_png_is_rescaled_not_clipped_on_every_path(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63000
    path = tmp_path / "ct.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    image = np.asarray(open_image(path))
    assert image.min() == 0 and image.max() == 255 and len(np.unique(image[..., 0])) == 64  # not all white
    assert np.array_equal(image, np.asarray(load_image(_sample(path, 1))))  # training reads the same pixels
