"""Reader for Hugging Face Hub datasets (optional ``datasets`` dependency)."""
from __future__ import annotations

from typing import Any

from .schema import Sample, SampleList, normalize_answer, normalize_text
from .validate import (
    EMPTY_ANSWER, EMPTY_QUESTION, MISSING_IMAGE, RowContext, canonical_split, collect,
    parse_answer_type, text_field,
)

HF_PREFIX = "hf://"


def read_hf(
    dataset_id: str,
    split: str = "train",
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    image_field: str | None = "image",
    answer_type_field: str | None = None,
    source: str | None = None,
    skip_invalid: bool = False,
    **load_kwargs: Any,
) -> SampleList:
    """Read a Hub dataset such as ``flaviagiammarino/vqa-rad`` (``hf://`` prefix ok).

    Rows need a question, an answer and (unless ``image_field=None``) an image
    column, which ``datasets`` decodes to PIL; it is stored in
    ``Sample.image``. Without ``answer_type_field`` yes/no answers are
    "closed" and everything else "open". ``load_kwargs`` go to
    ``datasets.load_dataset`` (e.g. ``name=``, ``cache_dir=``).

    Raises ImportError if ``datasets`` is not installed and RuntimeError if
    the dataset cannot be loaded (offline, wrong id, gated...).
    """
    try:
        import datasets  # heavy and optional: only needed for this reader
    except ImportError as exc:
        raise ImportError(
            "read_hf needs the optional 'datasets' package (pip install datasets); "
            "or download the data and use a file reader such as read_vqa_rad"
        ) from exc
    dataset_id = dataset_id.removeprefix(HF_PREFIX)
    try:
        ds = datasets.load_dataset(dataset_id, split=split, **load_kwargs)
    except Exception as exc:  # network, auth and schema errors all end here
        raise RuntimeError(
            f"could not load Hugging Face dataset {dataset_id!r} (split {split!r}): {exc}. "
            "Check the id/split, network access and HF_DATASETS_OFFLINE / HF_HUB_OFFLINE."
        ) from exc
    name = source or dataset_id.rsplit("/", 1)[-1]
    canon = canonical_split(split, ("train", "val", "test", "all"))
    used = {question_field, answer_field, image_field, answer_type_field}

    def build(ctx: RowContext, row: dict) -> Sample:
        image = None
        if image_field is not None:
            image = row.get(image_field)
            if image is None:
                raise ctx.error(image_field, MISSING_IMAGE, "no image in row")
        question = normalize_text(text_field(ctx, row, question_field, EMPTY_QUESTION))
        answer = normalize_answer(text_field(ctx, row, answer_field, EMPTY_ANSWER))
        if answer_type_field is not None:
            answer_type = parse_answer_type(ctx, row, answer_type_field)
        else:
            answer_type = "closed" if answer in ("yes", "no") else "open"
        extra = {k: v for k, v in row.items() if k not in used}
        return Sample([], question, answer, answer_type, name, canon, extra, image)

    return collect(f"{HF_PREFIX}{dataset_id}[{split}]", enumerate(ds), build,
                   skip_invalid=skip_invalid)
