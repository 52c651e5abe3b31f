"""Bad image files found before training or prediction starts, each named with its sample.

A truncated JPEG, an empty or non-image ``.jpg`` or a huge scan used to fail only when a batch drew
it, steps into training and without the file's name. :func:`find_bad_images` looks at every image
file of a sample list once, in two passes:

1. :func:`~medqwen.data.schema.check_image_header` on each unique file: exists, not empty, a header
   PIL reads, at most ``MAX_IMAGE_PIXELS``; cheap, so every dataset of an experiment is checked
   before the model is even built;
2. a full decode of the samples that passed, which finds truncated or corrupt pixel data. The
   trainer passes its feature cache as ``decode``: it decodes and encodes each image once and keeps
   the features, so the check costs no extra decoding when the features are used for training.

:func:`bad_image_message` turns the result into one error listing up to :data:`MAX_LISTED` files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .schema import MAX_IMAGE_PIXELS, ImageLoadError, Sample, check_image_header, open_image

MAX_LISTED = 10  # bad files named in one message; the rest are counted
ID_KEYS = ("qid", "question_id", "id", "ID", "uid")  # where readers keep a row's id in Sample.extra


@dataclass
class BadImage:
    """A sample whose image cannot be used: its position in the list, its id (if any) and why."""

    index: int
    sample_id: Any
    message: str  # the ImageLoadError's message, which names the file

    def describe(self) -> str:
        who = f"sample {self.index}" + (f" (id={self.sample_id!r})" if self.sample_id is not None else "")
        return f"{who}: {self.message}"


def sample_id(sample: Sample) -> Any:
    """The id a reader kept from the sample's row (qid, id, ...), or None."""
    return next((sample.extra[k] for k in ID_KEYS if k in sample.extra), None)


def decode_files(sample: Sample) -> None:
    """Decode every image file of a sample (the default full check); in-memory images are skipped."""
    for path in sample.images:
        open_image(path)


def find_bad_images(
    samples: Sequence[Sample],
    *,
    decode: Callable[[Sample], Any] | None = decode_files,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> list[BadImage]:
    """Samples whose image fails the header check or ``decode(sample)`` (an ImageLoadError); each file
    is looked at once however many samples share it. ``decode=None``: the header check only."""
    header: dict[str, str | None] = {}
    decoded: dict[tuple[str, ...], str | None] = {}
    bad = []
    for index, sample in enumerate(samples):
        message = None
        for path in sample.images:
            if path not in header:
                header[path] = _failure(check_image_header, path, max_pixels=max_pixels)
            message = message or header[path]
        key = tuple(sample.images)
        if message is None and decode is not None:
            if not key:  # an in-memory image
                message = _failure(decode, sample)
            else:
                if key not in decoded:
                    decoded[key] = _failure(decode, sample)
                message = decoded[key]
        if message is not None:
            bad.append(BadImage(index, sample_id(sample), message))
    return bad


def _failure(check: Callable[..., Any], *args: Any, **kwargs: Any) -> str | None:
    try:
        check(*args, **kwargs)
    except ImageLoadError as err:  # only image errors: a bug elsewhere must not pass for a bad file
        return str(err)
    return None


def bad_image_message(bad: Sequence[BadImage], total: int, where: str, hint: str) -> str:
    """``where: 3 of 120 samples have an image that cannot be used:`` + up to MAX_LISTED lines + hint."""
    lines = [f"{where}: {len(bad)} of {total} samples have an image that cannot be used:"]
    lines += [f"  {b.describe()}" for b in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    lines.append(hint)
    return "\n".join(lines)
