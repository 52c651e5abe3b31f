"""Reader for LLaVA-Med alignment / instruction conversation files."""
from __future__ import annotations

import re
from pathlib import Path

from .schema import Sample, SampleList, normalize_text
from .validate import (
    EMPTY_ANSWER, EMPTY_QUESTION, MALFORMED_ROW, ImageResolver, RowContext, canonical_split,
    collect, iter_json_records,
)

_HUMAN = frozenset({"human", "user"})
_GPT = frozenset({"gpt", "assistant"})
# The placeholder sits on its own line in LLaVA data ("<image>\nWhat ...")
# but also appears after the question; eat the newline that goes with it.
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")


def strip_image_token(text: str) -> str:
    """Remove LLaVA's ``<image>`` placeholder(s) and the whitespace around them."""
    return _IMAGE_TOKEN.sub(" ", text).strip()


def read_llava_med(
    path: str | Path,
    split: str = "train",
    *,
    image_root: str | Path | None = None,
    source: str = "llava_med",
    skip_invalid: bool = False,
    check_images: bool = True,
    verify_images: bool = False,
) -> SampleList:
    """Read LLaVA-Med conversations (``llava_med_alignment_500k.json``,
    ``llava_med_instruct_60k*.json``), as a JSON list or JSONL::

        {"id": "PMC123_fig1", "image": "PMC123/fig1.jpg",
         "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"},
                           {"from": "gpt", "value": "A chest CT ..."}, ...]}

    Each human turn followed by a gpt turn becomes one open Sample; the
    ``<image>`` token is stripped from the question, the answer keeps its
    line breaks. ``extra`` holds ``id``, ``turn`` (0-based pair index) and any
    other top-level keys. ``image`` is relative to ``image_root`` (default:
    the file's folder); rows without ``image`` are text-only. Roles must
    alternate human/gpt ("user"/"assistant" also accepted), otherwise the
    whole row is a DataError.
    """
    split = canonical_split(split, ("train", "val", "test", "all"))
    path = Path(path)
    resolve = ImageResolver(image_root or path.parent, check_images=check_images,
                            verify_images=verify_images)
    used = {"image", "conversations"}

    def build(ctx: RowContext, row: dict) -> list[Sample]:
        images = [resolve(ctx, row["image"], "image")] if row.get("image") is not None else []
        turns = row.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise ctx.error("conversations", MALFORMED_ROW, "expected a non-empty list of turns")
        if len(turns) % 2:
            raise ctx.error("conversations", MALFORMED_ROW, f"odd number of turns ({len(turns)})")
        extra = {k: v for k, v in row.items() if k not in used}
        samples = []
        for pair in range(len(turns) // 2):
            human, gpt = turns[2 * pair], turns[2 * pair + 1]
            question = _turn_text(ctx, human, _HUMAN, 2 * pair, EMPTY_QUESTION)
            answer = _turn_text(ctx, gpt, _GPT, 2 * pair + 1, EMPTY_ANSWER)
            samples.append(Sample(
                images=list(images),
                question=normalize_text(strip_image_token(question)),
                answer=normalize_text(answer, keep_newlines=True),
                answer_type="open",
                source=source,
                split=split,
                extra={**extra, "turn": pair},
            ))
        return samples

    return collect(path, iter_json_records(path), build, skip_invalid=skip_invalid, id_key="id")


def _turn_text(ctx: RowContext, turn: object, roles: frozenset[str], index: int,
               empty_reason: str) -> str:
    field = f"conversations[{index}]"
    if not isinstance(turn, dict) or turn.get("from") not in roles:
        got = turn.get("from") if isinstance(turn, dict) else type(turn).__name__
        raise ctx.error(field, MALFORMED_ROW, f"expected role {sorted(roles)}, got {got!r}")
    value = turn.get("value")
    if not isinstance(value, str) or not strip_image_token(value):
        raise ctx.error(field, empty_reason, "no text in turn")
    return value
