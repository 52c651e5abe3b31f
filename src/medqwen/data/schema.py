"""The one sample schema every reader produces, plus text/image helpers.

A :class:`Sample` is one (image(s), question, answer) triple. Captions, reports
and instructions use the same shape: ``question`` holds the instruction and
``answer`` the target text, with ``answer_type == "open"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

ANSWER_TYPES = ("closed", "open")

# Largest image (width x height) that open_image decodes: 50 megapixels, e.g. 7071 x 7071. Radiographs,
# mammograms, CT/MR slices and pathology tiles are far smaller; a larger file (a whole-slide image, a
# scan saved at print resolution) is refused by name from its header, before its pixels are decoded:
# the model sees at most a few hundred pixels a side, and PIL's own guard (DecompressionBombError at
# about 179 M pixels) would fail without naming the file. Downscale such files first, or pass
# max_pixels to open_image. The web page (medqwen serve) uses the same limit.
MAX_IMAGE_PIXELS = 50_000_000


class DataError(ValueError):
    """A bad row (or file) in a dataset.

    ``reason`` is a short fixed string (see ``medqwen.data.validate``) that
    ``skip_invalid`` readers use as the key of ``SampleList.skipped``.
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | Path,
        row: int | None = None,
        row_id: Any = None,
        field: str | None = None,
        detail: str = "",
    ) -> None:
        self.reason = reason
        self.file = str(file)
        self.row = row
        self.row_id = row_id
        self.field = field
        self.detail = detail
        where = self.file
        if row is not None:
            where += f": row {row}"
        if row_id is not None:
            where += f" (id={row_id!r})"
        if field is not None:
            where += f": field {field!r}"
        msg = f"{where}: {reason}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


@dataclass
class Sample:
    """One training/evaluation example, whatever the source format.

    images: absolute image paths (empty for text-only or in-memory samples).
    question: the question or instruction shown to the model.
    answer: the target; VQA answers are ``normalize_answer``-ed (lowercase),
        captions/reports keep their case with whitespace collapsed.
    answer_type: "closed" (yes/no, multiple choice, class label) or "open".
    source: dataset name, e.g. "vqa_rad".
    split: canonical split, "train" / "val" / "test" (or "all").
    extra: every other field of the original row (qid, organ, ...).
    image: an in-memory image (PIL image or numpy array) for formats without
        files, e.g. MedMNIST. Excluded from ==/repr: arrays have no truth value
        and would flood logs.
    """

    images: list[str]
    question: str
    answer: str
    answer_type: str
    source: str
    split: str
    extra: dict[str, Any] = field(default_factory=dict)
    image: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {self.answer_type!r}")


class SampleList(list):
    """A plain list of samples that also remembers what the reader dropped.

    ``skipped`` maps a DataError reason to the number of rows skipped for it
    (always empty unless the reader ran with ``skip_invalid=True``). Slicing
    returns a plain ``list``.
    """

    def __init__(self, samples: Any = (), skipped: dict[str, int] | None = None) -> None:
        super().__init__(samples)
        self.skipped: dict[str, int] = dict(skipped or {})

    def merge(self, other: "SampleList") -> None:
        """Append ``other``'s samples and add up its skip counts."""
        self.extend(other)
        for reason, n in getattr(other, "skipped", {}).items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n


def normalize_text(text: Any, *, keep_newlines: bool = False) -> str:
    """Strip and collapse whitespace (incl. tabs, NBSP, thin spaces); keep case.

    With ``keep_newlines`` single line breaks survive (runs of blank lines
    become one) so instruction answers with lists keep their layout.
    """
    text = str(text)
    if not keep_newlines:
        return " ".join(text.split())
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def normalize_answer(text: Any) -> str:
    """Canonical form of a short VQA answer: whitespace-collapsed and lowercase.

    Shared with the evaluation code so that gold answers and predictions are
    compared in the same form. Numbers are accepted (VQA-RAD stores a few
    answers as JSON integers).
    """
    return normalize_text(text).lower()


class ImageLoadError(ValueError):
    """An image file that cannot be read or shown; the message names the file."""


def load_image(sample: Sample, index: int = 0) -> Image.Image:
    """Return image ``index`` of ``sample`` as an RGB PIL image.

    In-memory images (``sample.image``) win over paths; files go through
    :func:`open_image` (so DICOM works too). Raises ValueError for text-only
    samples.
    """
    if sample.image is not None:
        return to_rgb(sample.image)
    if not sample.images:
        raise ValueError(f"{sample.source} sample has no image (text-only)")
    return open_image(sample.images[index])


def open_image(path: str | Path, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read an image file as an RGB PIL image: the one loader of training, ``predict`` and ``serve``.

    DICOM files (``.dcm``/``.dicom``/``.dic``, or the ``DICM`` magic) go through
    :func:`medqwen.data.dicom.load_dicom` (rescale, window, MONOCHROME1, middle
    frame); everything else through PIL and :func:`to_rgb` (16-bit and float
    images are rescaled, not clipped). ``max_pixels`` (default
    :data:`MAX_IMAGE_PIXELS`; None: only PIL's own limit) rejects larger images
    from their header, before decoding. Raises :class:`ImageLoadError` (a
    ValueError) naming the file.
    """
    from .dicom import is_dicom, load_dicom

    if is_dicom(path):
        return load_dicom(path, max_pixels=max_pixels)
    return _read_pil(path, max_pixels, decode=True)


def check_image_header(path: str | Path, *, max_pixels: int | None = MAX_IMAGE_PIXELS) -> None:
    """The cheap part of :func:`open_image`: the file exists, is not empty, has a header PIL reads
    and is at most ``max_pixels``; pixels are not decoded (a truncated file passes). DICOM files are
    only checked for presence: pydicom reads header and pixels in one go. Raises :class:`ImageLoadError`."""
    from .dicom import is_dicom

    if is_dicom(path):
        if not Path(path).is_file():
            raise ImageLoadError(f"{path}: no such file")
        return
    _read_pil(path, max_pixels, decode=False)


def _read_pil(path: str | Path, max_pixels: int | None, *, decode: bool) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageLoadError(
                    f"{path}: image is {width} x {height} = {width * height:,} pixels, "
                    f"more than the limit of {max_pixels:,} pixels (MAX_IMAGE_PIXELS): downscale it first"
                )
            if not decode:
                return None
            im.load()
            return to_rgb(im)
    except ImageLoadError:
        raise
    except FileNotFoundError as err:
        raise ImageLoadError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise ImageLoadError(f"{path}: is a folder, not an image file") from err
    except UnidentifiedImageError as err:
        if Path(path).stat().st_size == 0:
            raise ImageLoadError(f"{path}: empty file (0 bytes), not an image") from err
        raise ImageLoadError(f"{path}: not an image file (neither a format PIL reads nor DICOM)") from err
    except Image.DecompressionBombError as err:  # raised by Image.open, before our own size check
        raise ImageLoadError(f"{path}: image too large to decode safely ({err}); images may have at most "
                             f"{max_pixels or MAX_IMAGE_PIXELS:,} pixels: downscale it first") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt data
        raise ImageLoadError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def to_rgb(image: Any) -> Image.Image:
    """Convert a PIL image or numpy array (HxW, HxWx1/3/4) to an RGB PIL image."""
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            # PIL's convert("RGB") clips >255, which whites out 16-bit scans.
            return to_rgb(np.asarray(image))
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot make an image from an array of shape {arr.shape}")
    arr = _to_uint8(arr)
    return Image.fromarray(arr).convert("RGB")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float32)
    lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo < 0.0 or hi > 255.0:
        # Raw scanner values: min-max to the display range.
        a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
