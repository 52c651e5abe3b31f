"""Reader for OmniMedVQA (Hu et al. 2024) multiple-choice QA files."""
from __future__ import annotations

import string
from pathlib import Path

from .schema import Sample, SampleList, normalize_answer, normalize_text
from .validate import (
    ANSWER_NOT_IN_OPTIONS, EMPTY_ANSWER, EMPTY_QUESTION, ImageResolver, RowContext,
    canonical_split, collect, iter_json_records, report, text_field,
)

_OPTION_KEYS = [f"option_{letter}" for letter in string.ascii_uppercase]


def _files_and_root(path: Path) -> tuple[list[Path], Path]:
    if path.is_file():
        # Image paths ("Images/<dataset>/...") are relative to the folder that
        # holds QA_information/, not to the JSON file itself.
        for parent in path.parents:
            if parent.name == "QA_information":
                return [path], parent.parent
        return [path], path.parent
    files = sorted((path / "QA_information").glob("**/*.json")) or sorted(path.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no OmniMedVQA JSON files under {path}")
    return files, path


def format_options(options: dict[str, str]) -> str:
    """``{"A": "CT", "B": "MRI"}`` -> ``"Options: A. CT; B. MRI"``."""
    return "Options: " + "; ".join(f"{k}. {v}" for k, v in options.items())


def read_omnimedvqa(
    path: str | Path,
    split: str = "test",
    *,
    image_root: str | Path | None = None,
    options_in_question: bool = True,
    skip_invalid: bool = False,
    check_images: bool = True,
    verify_images: bool = False,
) -> SampleList:
    """Read OmniMedVQA QA JSON (one file, or every file of a release folder).

    Expected layout::

        OmniMedVQA/QA_information/{Open-access,Restricted-access}/<dataset>.json
        OmniMedVQA/Images/<dataset>/...

    Each file is a JSON list of records with question_id, dataset,
    question_type, modality_type (one upstream file spells it ``modality``),
    question, gt_answer, image_path (relative to the OmniMedVQA folder) and
    option_A..option_D (some questions have only two or three options).

    Multiple-choice rows become ``answer_type="closed"`` with the answer being
    the normalised text of the correct option; the options go into
    ``extra["options"]`` (letter -> text), the correct letter into
    ``extra["answer_letter"]``, and (if ``options_in_question``) into the
    question as ``"<question>\\nOptions: A. ...; B. ..."``. A ``gt_answer``
    that matches no option is a DataError. Rows without options are "open".
    OmniMedVQA is an evaluation benchmark without official splits: ``split``
    is only recorded (default "test").
    """
    split = canonical_split(split, ("train", "val", "test", "all"))
    files, default_root = _files_and_root(Path(path))
    resolve = ImageResolver(image_root or default_root, check_images=check_images,
                            verify_images=verify_images)
    used = {"question", "gt_answer", "image_path", *_OPTION_KEYS}

    def build(ctx: RowContext, row: dict) -> Sample:
        image = resolve(ctx, row.get("image_path"), "image_path")
        question = normalize_text(text_field(ctx, row, "question", EMPTY_QUESTION))
        answer_raw = normalize_text(text_field(ctx, row, "gt_answer", EMPTY_ANSWER))
        options = {key[-1]: normalize_text(row[key]) for key in _OPTION_KEYS
                   if row.get(key) is not None and str(row[key]).strip()}
        extra = {k: v for k, v in row.items() if k not in used}
        if "modality" in extra and extra.get("modality_type") is None:
            extra["modality_type"] = extra.pop("modality")
        answer_type = "open"
        if options:
            gold = normalize_answer(answer_raw)
            letters = [k for k, v in options.items() if normalize_answer(v) == gold]
            if not letters:
                raise ctx.error("gt_answer", ANSWER_NOT_IN_OPTIONS,
                                f"{answer_raw!r} not in {list(options.values())}")
            extra.update(options=options, answer_letter=letters[0])
            answer_type = "closed"
            if options_in_question:
                question = f"{question}\n{format_options(options)}"
        return Sample([image], question, normalize_answer(answer_raw), answer_type,
                      "omnimedvqa", split, extra)

    out = SampleList()
    for file in files:
        out.merge(collect(file, iter_json_records(file), build, skip_invalid=skip_invalid,
                          id_key="question_id", log_report=False))
    report(path, out)
    return out
