"""DICOM files as RGB images, the way a radiology viewer first shows them (pydicom).

:func:`load_dicom` turns one ``.dcm`` file into an 8-bit RGB PIL image:

1. the stored values go through the Modality LUT: ``RescaleSlope`` / ``RescaleIntercept`` (or a
   Modality LUT Sequence), also from an enhanced multi-frame file's functional groups;
2. grayscale images are windowed with the stored ``WindowCenter`` / ``WindowWidth`` (first pair,
   ``VOILUTFunction`` LINEAR, LINEAR_EXACT or SIGMOID as in PS3.3 C.11.2.1.2) when present, else
   with a percentile window (0.5th to 99.5th percentile of the frame);
3. ``MONOCHROME1`` (white = low values) is inverted so that high values are bright;
4. a multi-frame file gives its middle frame (frame ``n // 2``, 0-based), and says so in a log
   warning and in ``image.info["dicom"]["notes"]``;
5. colour images (RGB, YBR_* which pydicom converts, PALETTE COLOR) are scaled to 8 bits.

Compressed transfer syntaxes are decoded by whatever pydicom can use without extra packages here
(RLE Lossless, Deflate, JPEG Baseline and JPEG 2000 through Pillow); for the others (JPEG-LS, JPEG
Lossless, 12-bit JPEG Extended, ...) :class:`DicomError` names the file, the transfer syntax and
the packages that decode it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .schema import ImageLoadError

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_OTHER_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PERCENTILE_WINDOW = (0.5, 99.5)
_CODEC_HINT = (
    "pydicom decodes uncompressed, Deflate, RLE Lossless, 8-bit JPEG Baseline and JPEG 2000 data with "
    "the installed packages; for JPEG-LS, JPEG Lossless and 12-bit JPEG install "
    "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` (or convert the file, e.g. `gdcmconv --raw`)"
)


class DicomError(ImageLoadError):
    """A DICOM file that cannot be shown as an image; the message names the file."""


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom``/``.dic`` name, or a file with another name (not a common image
    suffix such as .png/.jpg) that has the ``DICM`` magic at byte 128."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in _OTHER_IMAGE_SUFFIXES:  # the training loop reads many of these: no extra file read
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def load_dicom(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Read a DICOM file as an RGB PIL image (see the module docstring for the display pipeline).

    ``image.info["dicom"]`` holds what was done: frames, frame used, photometric interpretation,
    transfer syntax, window (center, width) and where it came from, rescale, inversion and notes.
    ``max_pixels`` rejects larger frames before their pixel data is decoded. Raises
    :class:`DicomError` (a ValueError) naming the file for anything it cannot show.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as err:  # pragma: no cover - pydicom is a dependency of the serve/dev extras
        raise DicomError(f"{path}: reading DICOM files needs pydicom (pip install pydicom)") from err

    path = Path(path)
    notes: list[str] = []
    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            # No preamble / file meta: a bare dataset, as some older tools write. Try it, then check below.
            ds = pydicom.dcmread(path, force=True)
            notes.append("no DICOM file meta header; read as a bare dataset")
    except FileNotFoundError as err:
        raise DicomError(f"{path}: no such file") from err
    except OSError as err:
        raise DicomError(f"{path}: cannot read the file ({err})") from err
    except Exception as err:  # pydicom raises many types for garbage input
        raise DicomError(f"{path}: not a readable DICOM file ({type(err).__name__}: {_first_line(err)})") from err

    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if notes and notes[0].startswith("no DICOM file meta header"):
            raise DicomError(f"{path}: not a readable DICOM file (no DICOM header, and no image data in it)")
        kind = ds.get("SOPClassUID")
        what = f" ({getattr(kind, 'name', kind)})" if kind else ""
        raise DicomError(f"{path}: this DICOM file holds no image (no Pixel Data){what}")
    _ensure_transfer_syntax(ds, notes)
    ts = ds.file_meta.TransferSyntaxUID
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise DicomError(f"{path}: broken image header (Rows / Columns / NumberOfFrames): {_first_line(err)}") from err
    if max_pixels is not None and rows * cols > max_pixels:
        raise DicomError(
            f"{path}: image is {cols} x {rows} = {rows * cols:,} pixels, more than the limit of {max_pixels:,} pixels"
        )
    index = frames // 2
    if frames > 1:
        note = f"multi-frame DICOM with {frames} frames: using the middle frame ({index + 1} of {frames})"
        notes.append(note)
        log.warning("%s: %s", path, note)

    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds, index=index if frames > 1 else None)
    except Exception as err:  # decoder plugins raise RuntimeError, ValueError, NotImplementedError, ...
        reason = _first_line(err)
        if ts.is_compressed:
            raise DicomError(
                f"{path}: cannot decode its pixel data, compressed as '{ts.name}' ({ts}): {reason}. {_CODEC_HINT}"
            ) from err
        raise DicomError(f"{path}: cannot decode its pixel data ('{ts.name}'): {reason}") from err

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    info: dict[str, Any] = {
        "file": str(path),
        "frames": frames,
        "frame": index,
        "photometric": photometric,
        "transfer_syntax": ts.name,
        "size": [cols, rows],
        "rescale": None,
        "window": None,
        "window_source": None,
        "inverted": False,
        "notes": notes,
    }
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = _scale_to_uint8(np.asarray(apply_color_lut(arr, ds)), bits=None)
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):  # RGB, or YBR that pydicom converted to RGB
        rgb = _scale_to_uint8(arr[..., :3], bits=int(ds.get("BitsStored") or arr.dtype.itemsize * 8))
    elif arr.ndim == 2:
        gray = _grayscale(ds, arr, index, info)
        if photometric == "MONOCHROME1":
            gray = 1.0 - gray
            info["inverted"] = True
        rgb = np.repeat(np.rint(gray * 255.0).astype(np.uint8)[..., None], 3, axis=-1)
    else:
        raise DicomError(f"{path}: unsupported pixel layout {arr.shape} ({photometric})")
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    image.info["dicom"] = info
    return image


def _grayscale(ds: Any, arr: np.ndarray, index: int, info: dict) -> np.ndarray:
    """Stored values -> modality values -> windowed to [0, 1] (float64, 0 = dark)."""
    values = arr.astype(np.float64)
    slope, intercept = _rescale(ds, index)
    if slope is not None:
        values = values * slope + intercept
        info["rescale"] = [slope, intercept]
    elif "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        info["rescale"] = "modality LUT"
    window = _window(ds, index)
    if window is not None:
        center, width, function = window
        info["window"], info["window_source"] = [center, width], "file"
        return _apply_window(values, center, width, function)
    low, high = np.percentile(values, PERCENTILE_WINDOW)
    if not high > low:
        low, high = float(values.min()), float(values.max())
    info["window"] = [(low + high) / 2, high - low]
    info["window_source"] = f"percentile {PERCENTILE_WINDOW[0]}-{PERCENTILE_WINDOW[1]}"
    if not high > low:  # a constant image
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2) to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR with width 1: a threshold
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _functional_group(ds: Any, index: int, sequence: str) -> Any:
    """First item of `sequence` for frame `index` in an enhanced multi-frame file (per-frame wins)."""
    for groups, item_index in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > item_index:
            inner = seq[item_index].get(sequence)
            if inner:
                return inner[0]
    return None


def _rescale(ds: Any, index: int) -> tuple[float | None, float]:
    source = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else _functional_group(
        ds, index, "PixelValueTransformationSequence")
    if source is None:
        return None, 0.0
    try:
        slope = float(source.get("RescaleSlope", 1) or 1)
        intercept = float(source.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return None, 0.0
    return slope, intercept


def _window(ds: Any, index: int) -> tuple[float, float, str] | None:
    source = ds if "WindowCenter" in ds and "WindowWidth" in ds else _functional_group(ds, index, "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    try:
        center, width = float(_first(source.WindowCenter)), float(_first(source.WindowWidth))
    except (TypeError, ValueError, IndexError):
        return None
    if not np.isfinite(center) or not np.isfinite(width) or width < 1:
        return None
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return center, width, function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR"


def _first(value: Any) -> Any:
    """First of a multi-valued element (several windows are stored as a list)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0]
    return value


def _scale_to_uint8(arr: np.ndarray, bits: int | None) -> np.ndarray:
    """Colour data of `bits` stored bits (None: from the dtype) to 0..255."""
    if arr.dtype == np.uint8:
        return arr
    bits = bits or arr.dtype.itemsize * 8
    top = float(2 ** min(bits, 32) - 1)
    return np.clip(np.rint(arr.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)


def _ensure_transfer_syntax(ds: Any, notes: list[str]) -> None:
    """A bare dataset has no Transfer Syntax UID: take it from how pydicom read the file (uncompressed)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    implicit, little = ds.original_encoding
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    )
    notes.append(f"no transfer syntax stored; assumed {meta.TransferSyntaxUID.name}")


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n")[0].split()).rstrip(" :.") or type(err).__name__
    return text[:300]


def save_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    modality: str = "OT",
    bits_stored: int | None = None,
) -> Path:
    """Write a small uncompressed DICOM (Secondary Capture) file: for examples and tests.

    pixels: (rows, cols) or (frames, rows, cols) unsigned/signed integers (grayscale), or
        (rows, cols, 3) uint8 with ``photometric="RGB"``.
    rescale: (slope, intercept) stored as RescaleSlope / RescaleIntercept.
    window: (center, width) stored as WindowCenter / WindowWidth (in rescaled units).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path = Path(path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "Synthetic^Example", "SYNTHETIC"
    pixels = np.asarray(pixels)
    bits = bits_stored or pixels.dtype.itemsize * 8
    ds.set_pixel_data(pixels, photometric, bits)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
