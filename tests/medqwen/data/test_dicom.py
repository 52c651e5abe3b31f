"""DICOM input (medqwen.data.dicom) on the DICOM files pydicom ships as test data, plus the one image
loader (`open_image`) every path uses."""

import logging

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from medqwen.data import ImageLoadError, Sample, load_image, open_image  # noqa: E402
from medqwen.data.dicom import DicomError, is_dicom, load_dicom, save_dicom  # noqa: E402


def dicom_file(name: str) -> str:
    """A file of pydicom's own test data; these ship inside the installed package (no download)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not in this pydicom install")
    return path


def gray(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image)
    assert image.mode == "RGB" and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0].astype(int)


def test_ct_rescale_and_percentile_window():
    """CT_small: slope 1, intercept -1024, no stored window -> 0.5-99.5 percentile window in HU."""
    image = load_dicom(dicom_file("CT_small.dcm"))
    info = image.info["dicom"]
    assert info["rescale"] == [1.0, -1024.0] and info["window_source"] == "percentile 0.5-99.5"
    hu = pydicom.dcmread(dicom_file("CT_small.dcm")).pixel_array.astype(float) - 1024
    low, high = np.percentile(hu, [0.5, 99.5])
    expected = np.rint(np.clip((hu - low) / (high - low), 0, 1) * 255)
    assert np.abs(gray(image) - expected).max() <= 1
    assert image.size == (128, 128)


def test_mr_stored_window_is_applied():
    """MR_small stores WindowCenter 600 / WindowWidth 1600: the DICOM LINEAR window, not min-max."""
    image = load_dicom(dicom_file("MR_small.dcm"))
    info = image.info["dicom"]
    assert info["window"] == [600.0, 1600.0] and info["window_source"] == "file"
    x = pydicom.dcmread(dicom_file("MR_small.dcm")).pixel_array.astype(float)
    expected = np.rint(np.clip((x - 599.5) / 1599 + 0.5, 0, 1) * 255)
    assert np.abs(gray(image) - expected).max() <= 1


def test_compressed_syntaxes_decoded_without_extra_codecs_match_the_uncompressed_file():
    reference = gray(load_dicom(dicom_file("MR_small.dcm")))
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        assert (gray(load_dicom(dicom_file(name))) == reference).all(), name
    from PIL import features

    if features.check("jpg_2000"):  # Pillow's bundled OpenJPEG decodes JPEG 2000
        assert (gray(load_dicom(dicom_file("MR_small_jp2klossless.dcm"))) == reference).all()
    colour = load_dicom(dicom_file("SC_rgb_jpeg_dcmtk.dcm"))  # JPEG baseline, YBR_FULL -> RGB
    assert colour.mode == "RGB" and colour.size == (100, 100)
    assert np.asarray(colour).std(axis=-1).mean() > 1  # really coloured, not gray


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    inverted = load_dicom(path)
    assert inverted.info["dicom"]["inverted"]
    assert (gray(inverted) == 255 - gray(load_dicom(dicom_file("MR_small.dcm")))).all()


def test_multi_frame_takes_the_middle_frame_and_says_so(caplog):
    path = dicom_file("rtdose.dcm")  # 15 frames
    with caplog.at_level(logging.WARNING, logger="medqwen.data.dicom"):
        image = load_dicom(path)
    info = image.info["dicom"]
    assert info["frames"] == 15 and info["frame"] == 7
    assert "middle frame (8 of 15)" in caplog.text and "rtdose.dcm" in caplog.text
    assert any("middle frame" in note for note in info["notes"])
    frame = pydicom.dcmread(path).pixel_array[7].astype(float)
    low, high = np.percentile(frame, [0.5, 99.5])  # the window of frame 8 (rescaling is linear)
    assert np.abs(gray(image) - np.rint(np.clip((frame - low) / (high - low), 0, 1) * 255)).max() <= 1
    assert image.size == (10, 10) and gray(image).max() == 255 and gray(image).min() == 0
    colour = load_dicom(dicom_file("examples_ybr_color.dcm"))  # 30 frames of JPEG baseline YBR
    assert colour.info["dicom"]["frame"] == 15 and colour.size == (320, 240)


def test_undecodable_compression_is_a_clear_error_naming_the_file():
    path = dicom_file("MR_small_jpeg_ls_lossless.dcm")
    try:
        load_dicom(path)
    except DicomError as err:
        message = str(err)
        assert path in message and "JPEG-LS" in message and "pylibjpeg" in message
        assert isinstance(err, ValueError)
    else:
        pytest.skip("a JPEG-LS decoder is installed here, so this file decodes")


def test_not_an_image_and_no_pixel_data(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all" * 10)
    with pytest.raises(DicomError, match="junk.dcm"):
        load_dicom(junk)
    with pytest.raises(DicomError, match="holds no image"):
        load_dicom(dicom_file("rtplan.dcm"))


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(DicomError, match=r"128 x 128 = 16,384 pixels, more than the limit of 10,000 pixels"):
        load_dicom(dicom_file("CT_small.dcm"), max_pixels=10_000)


def test_save_dicom_round_trip_and_detection_without_suffix(tmp_path):
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) % 256
    stored = ((pixels + 1000) * 4).astype(np.uint16)  # value = 0.25 * stored - 1000 = pixels
    path = save_dicom(tmp_path / "a.dcm", stored, rescale=(0.25, -1000), window=(127.5, 256))
    back = gray(open_image(path))
    assert np.abs(back - pixels).max() <= 1
    plain = tmp_path / "no_suffix"
    plain.write_bytes(path.read_bytes())
    assert is_dicom(plain) and not is_dicom(tmp_path / "x.png")
    assert (gray(open_image(plain)) == back).all()


def test_open_image_rescales_16_bit_png_instead_of_clipping(tmp_path):
    """The bug `predict` had: PIL's convert("RGB") clips 16-bit values to white."""
    ramp = (np.arange(256 * 16, dtype=np.uint16).reshape(16, 256) * 16)  # 0 .. 65520
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    values = gray(open_image(path))
    assert values.min() == 0 and values.max() == 255 and len(np.unique(values)) > 200


def test_open_image_errors_name_the_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ImageLoadError, match="notes.txt: not an image file"):
        open_image(text)
    with pytest.raises(ImageLoadError, match="no such file"):
        open_image(tmp_path / "missing.png")
    big = tmp_path / "big.png"
    Image.new("1", (300, 200)).save(big)
    with pytest.raises(ImageLoadError, match="300 x 200 = 60,000 pixels, more than the limit of 50,000"):
        open_image(big, max_pixels=50_000)


def test_data_readers_accept_dicom_through_load_image():
    sample = Sample(images=[dicom_file("CT_small.dcm")], question="q", answer="a", answer_type="open",
                    source="test", split="test")
    assert load_image(sample).size == (128, 128)
