"""Readers for radiology/pathology VQA sets: VQA-RAD, SLAKE, PathVQA.

All return a :class:`SampleList` of closed/open QA samples with answers passed
through :func:`normalize_answer`. Common keyword options:

- ``skip_invalid``: drop bad rows (counted in ``.skipped``) instead of raising
  :class:`DataError`.
- ``check_images``: require each image file to exist (default True).
- ``verify_images``: also decode every image with PIL (slow; default False).
- ``image_dir``: override where image paths are resolved; paths escaping it
  are always rejected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .schema import Sample, SampleList, normalize_answer, normalize_text
from .validate import (
    EMPTY_ANSWER, EMPTY_QUESTION, MISSING_FIELD, ImageResolver, RowContext,
    canonical_split, collect, find_split_file, iter_json_records, parse_answer_type,
    text_field,
)

YES_NO = frozenset({"yes", "no"})


def _json_source(root_or_file: str | Path, split_files: list[str]) -> tuple[Path, Path]:
    """(annotation file, folder it lives in) for a dataset root or a direct file."""
    path = Path(root_or_file)
    if path.is_file():
        return path, path.parent
    return find_split_file(path, split_files), path


def _extra(row: dict, used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


def read_vqa_rad(
    root: str | Path,
    split: str = "train",
    *,
    image_dir: str | Path | None = None,
    skip_invalid: bool = False,
    check_images: bool = True,
    verify_images: bool = False,
    answer_type: str | None = None,
) -> SampleList:
    """Read VQA-RAD (Lau et al. 2018) in its public JSON form.

    Expected layout::

        root/trainset.json, root/testset.json   # JSON lists
        root/images/<image_name>                # e.g. synpic54610.jpg

    Record fields: qid, image_name, image_organ, answer, answer_type
    ("CLOSED"/"OPEN", sometimes with a trailing space), question_type,
    question, phrase_type. ``root`` may also be one of the JSON files.
    Splits: train, test (VQA-RAD has no official validation split).
    ``answer_type``: ``closed`` or ``open`` keeps only those questions (None: all).
    """
    if answer_type not in (None, "closed", "open"):
        raise ValueError(f"read_vqa_rad: option answer_type={answer_type!r}; allowed: closed, open, null")
    split = canonical_split(split, ("train", "test"))
    file, base = _json_source(root, [f"{split}set.json"])
    resolve = ImageResolver(image_dir or base / "images", check_images=check_images,
                            verify_images=verify_images)
    used = {"image_name", "question", "answer", "answer_type"}

    def build(ctx: RowContext, row: dict) -> Sample:
        return _vqa_sample(ctx, row, resolve, "image_name", "vqa_rad", split, used)

    samples = collect(file, iter_json_records(file), build, skip_invalid=skip_invalid, id_key="qid")
    if answer_type is None:
        return samples
    return SampleList([s for s in samples if s.answer_type == answer_type], skipped=samples.skipped)


def read_slake(
    root: str | Path,
    split: str = "train",
    *,
    q_lang: str | None = "en",
    image_dir: str | Path | None = None,
    skip_invalid: bool = False,
    check_images: bool = True,
    verify_images: bool = False,
) -> SampleList:
    """Read SLAKE 1.0 (Liu et al. 2021).

    Expected layout::

        root/train.json, root/validate.json, root/test.json   # JSON lists
        root/imgs/<img_name>                                  # e.g. xmlab102/source.jpg

    Record fields: img_id, img_name, question, answer, q_lang ("en"/"zh"),
    location, modality, answer_type (CLOSED/OPEN), base_type, content_type,
    triple, qid. Rows whose ``q_lang`` differs from ``q_lang`` are dropped
    before validation (``q_lang=None`` keeps both languages). Use
    ``check_images=False`` with annotation-only copies.
    Splits: train, val (file validate.json), test.
    """
    split = canonical_split(split)
    names = {"train": ["train.json"], "val": ["validate.json", "val.json", "validation.json"],
             "test": ["test.json"]}[split]
    file, base = _json_source(root, names)
    resolve = ImageResolver(image_dir or base / "imgs", check_images=check_images,
                            verify_images=verify_images)
    used = {"img_name", "question", "answer", "answer_type"}

    def build(ctx: RowContext, row: dict) -> Sample | None:
        if q_lang is not None:
            if "q_lang" not in row:
                raise ctx.error("q_lang", MISSING_FIELD, "needed for the language filter")
            if row["q_lang"] != q_lang:
                return None
        return _vqa_sample(ctx, row, resolve, "img_name", "slake", split, used)

    return collect(file, iter_json_records(file), build, skip_invalid=skip_invalid, id_key="qid")


def read_pathvqa(
    root: str | Path,
    split: str = "train",
    *,
    image_dir: str | Path | None = None,
    image_key: str = "image",
    skip_invalid: bool = False,
    check_images: bool = True,
    verify_images: bool = False,
) -> SampleList:
    """Read PathVQA (He et al. 2020) exported as JSON/JSONL with image paths.

    This is the Hugging Face ``image, question, answer`` schema with the
    embedded image replaced by a path (the original release ships pickles,
    which we refuse to unpickle; convert them once to this form)::

        root/{train,val,test}.jsonl   (or .json lists; "validation"/"valid" also found)
        {"image": "images/train/train_0422.jpg", "question": "...", "answer": "yes",
         "answer_type": "closed", "id": "..."}         # answer_type and id optional

    Image paths are relative to ``image_dir`` (default: the annotation
    folder). Without ``answer_type`` a row is closed iff its answer is yes/no.
    Extra keys are kept in ``extra``.
    """
    split = canonical_split(split)
    stems = {"train": ["train"], "val": ["val", "validation", "valid"], "test": ["test"]}[split]
    file, base = _json_source(root, [f"{s}{ext}" for s in stems for ext in (".jsonl", ".json")])
    resolve = ImageResolver(image_dir or base, check_images=check_images,
                            verify_images=verify_images)
    used = {image_key, "question", "answer", "answer_type"}

    def build(ctx: RowContext, row: dict) -> Sample:
        image = resolve(ctx, row.get(image_key), image_key)
        question = normalize_text(text_field(ctx, row, "question", EMPTY_QUESTION))
        answer = normalize_answer(text_field(ctx, row, "answer", EMPTY_ANSWER))
        if row.get("answer_type") is not None:
            answer_type = parse_answer_type(ctx, row)
        else:
            answer_type = "closed" if answer in YES_NO else "open"
        return Sample([image], question, answer, answer_type, "pathvqa", split,
                      _extra(row, used))

    return collect(file, iter_json_records(file), build, skip_invalid=skip_invalid, id_key="id")


def _vqa_sample(ctx: RowContext, row: dict, resolve, image_field: str, source: str, split: str, used: set) -> Sample:
    """One row of a VQA-RAD / SLAKE-style JSON record (image, question, answer, answer_type)."""
    return Sample(
        images=[resolve(ctx, row.get(image_field), image_field)],
        question=normalize_text(text_field(ctx, row, "question", EMPTY_QUESTION)),
        answer=normalize_answer(text_field(ctx, row, "answer", EMPTY_ANSWER)),
        answer_type=parse_answer_type(ctx, row),
        source=source,
        split=split,
        extra=_extra(row, used),
    )
