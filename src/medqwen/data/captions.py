"""Readers for image captions (ROCOv2) and radiology reports (IU X-Ray).

Both produce open-ended samples: ``question`` is a fixed instruction and
``answer`` the caption/report with whitespace collapsed but case kept.
"""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Iterator

from .schema import DataError, Sample, SampleList, normalize_text
from .validate import (
    EMPTY_ANSWER, MALFORMED_FILE, MISSING_IMAGE, ImageResolver, RowContext, canonical_split,
    collect, find_split_file, iter_json_records, read_text, text_field,
)

ROCO_INSTRUCTION = "Describe the image."
IU_XRAY_INSTRUCTION = (
    "Write the findings and impression of the radiology report for this chest X-ray."
)
_ROCO_DIRS = {"train": "train", "val": "valid", "test": "test"}


def _csv_rows(file: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """``(data-row index, row)`` pairs; the header is not counted."""
    reader = csv.DictReader(io.StringIO(read_text(file), newline=""))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(MALFORMED_FILE, file=file, detail=f"missing columns {missing}")
    yield from enumerate(reader)


def _concepts(file: Path) -> dict[str, list[str]]:
    if not file.is_file():
        return {}
    return {row["ID"]: [c for c in (row.get("CUIs") or "").split(";") if c]
            for _, row in _csv_rows(file, ("ID", "CUIs"))}


def read_roco(
    root: str | Path,
    split: str = "train",
    *,
    instruction: str = ROCO_INSTRUCTION,
    image_dir: str | Path | None = None,
    image_ext: str = ".jpg",
    skip_invalid: bool = False,
    check_images: bool = True,
    verify_images: bool = False,
) -> SampleList:
    """Read ROCOv2 (Pelka et al. 2024) captions.

    Expected layout (official names, or the same with a ``sample_`` prefix)::

        root/{train,valid,test}_captions.csv       # columns ID,Caption
        root/{train,valid,test}_concepts.csv       # optional: ID,CUIs (';'-separated)
        root/{train,valid,test}_concepts_manual.csv  # optional
        root/{train,valid,test}/<ID>.jpg

    ``root`` may also be a captions CSV (images then default to
    ``<csv folder>/<split dir>/``). Concept CUIs, when present, go to
    ``extra["concepts"]`` / ``extra["concepts_manual"]``.
    Splits: train, val (folder "valid"), test.
    """
    split = canonical_split(split)
    sdir = _ROCO_DIRS[split]
    root = Path(root)
    if root.is_file():
        captions, base = root, root.parent
    else:
        captions = find_split_file(root, [f"{sdir}_captions.csv", f"sample_{sdir}_captions.csv"])
        base = root
    prefix = captions.name[: -len("captions.csv")]  # "sample_train_" or "train_"
    concepts = _concepts(captions.parent / f"{prefix}concepts.csv")
    manual = _concepts(captions.parent / f"{prefix}concepts_manual.csv")
    resolve = ImageResolver(image_dir or base / sdir, check_images=check_images,
                            verify_images=verify_images)

    def build(ctx: RowContext, row: dict) -> Sample:
        image_id = (row.get("ID") or "").strip()
        image = resolve(ctx, image_id + image_ext if image_id else "", "ID")
        extra: dict = {k: v for k, v in row.items() if k not in ("Caption", None)}
        if image_id in concepts:
            extra["concepts"] = concepts[image_id]
        if image_id in manual:
            extra["concepts_manual"] = manual[image_id]
        caption = normalize_text(text_field(ctx, row, "Caption", EMPTY_ANSWER))
        return Sample([image], instruction, caption, "open", "roco", split, extra)

    rows = _csv_rows(captions, ("ID", "Caption"))
    return collect(captions, rows, build, skip_invalid=skip_invalid, id_key="ID")


def _iu_split_of(uid: str, ratios: tuple[float, float, float]) -> str:
    # md5 rather than hash(): stable across processes and Python versions.
    u = int.from_bytes(hashlib.md5(uid.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < ratios[0]:
        return "train"
    return "val" if u < ratios[0] + ratios[1] else "test"


def read_iu_xray(
    path: str | Path,
    split: str = "all",
    *,
    image_root: str | Path | None = None,
    image_ext: str = ".png",
    instruction: str = IU_XRAY_INSTRUCTION,
    sections: tuple[str, ...] = ("findings", "impression"),
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    skip_invalid: bool = False,
    check_images: bool = True,
    verify_images: bool = False,
) -> SampleList:
    """Read IU X-Ray / OpenI reports from ``reports.jsonl`` (file or its folder).

    One JSON object per line: uid, comparison, indication, findings,
    impression, mesh_major, mesh_automatic, images (image ids such as
    ``CXR1_1_IM-0001-3001``), license_url.

    The answer is the non-empty ``sections`` joined as
    ``"Findings: ... Impression: ..."``; a report with all of them empty is an
    ``empty answer`` DataError. Without ``image_root`` samples are text-only
    (``images == []``); with it, ``images`` are ``<image_root>/<id><image_ext>``
    and a report listing no image is a ``missing image`` error.

    IU X-Ray has no official split: ``split="all"`` returns every report,
    and train/val/test are a deterministic hash split of ``uid`` by
    ``split_ratios`` (not the R2Gen split).
    """
    split = canonical_split(split, ("train", "val", "test", "all"))
    if len(split_ratios) != 3 or min(split_ratios) < 0 or abs(sum(split_ratios) - 1) > 1e-6:
        raise ValueError(f"split_ratios must be 3 non-negative numbers summing to 1, "
                         f"got {split_ratios}")
    path = Path(path)
    file = path if path.is_file() else find_split_file(path, ["reports.jsonl"])
    resolve = (ImageResolver(image_root, check_images=check_images, verify_images=verify_images)
               if image_root is not None else None)

    def build(ctx: RowContext, row: dict) -> Sample | None:
        uid = str(row.get("uid", ""))
        if split != "all" and _iu_split_of(uid, split_ratios) != split:
            return None
        parts = [f"{name.capitalize()}: {normalize_text(row[name])}" for name in sections
                 if isinstance(row.get(name), str) and row[name].strip()]
        if not parts:
            raise ctx.error("/".join(sections), EMPTY_ANSWER, "all report sections are empty")
        ids = row.get("images") or []
        images: list[str] = []
        if resolve is not None:
            if not ids:
                raise ctx.error("images", MISSING_IMAGE, "report lists no image")
            images = [resolve(ctx, f"{i}{image_ext}", "images") for i in ids]
        extra = {k: v for k, v in row.items() if k != "images"}
        extra["image_ids"] = list(ids)
        return Sample(images, instruction, " ".join(parts), "open", "iu_xray", split, extra)

    return collect(file, iter_json_records(file), build, skip_invalid=skip_invalid, id_key="uid")
