"""The synthetic demo VQA set: determinism, split, balance, caching."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from medqwen.data import ANSWER_TYPES, Sample
from medqwen.data.synthetic import MODALITIES, describe_synthetic, make_synthetic_vqa

N = 24


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return root, make_synthetic_vqa(root, n_images=N, seed=3)


def _all(splits) -> list[Sample]:
    return list(splits["train"]) + list(splits["test"])


def _key(s: Sample):
    return (s.images, s.question, s.answer, s.answer_type, s.split, s.extra)


def test_deterministic_for_seed(generated, tmp_path):
    root, splits = generated
    again = make_synthetic_vqa(tmp_path, n_images=N, seed=3)
    rel = lambda s, r: [str(Path(p).relative_to(r)) for p in s.images]  # noqa: E731
    assert [(rel(s, root.resolve()), *_key(s)[1:]) for s in _all(splits)] == \
        [(rel(s, tmp_path.resolve()), *_key(s)[1:]) for s in _all(again)]
    for f in sorted((root / "images").glob("*.png")):
        assert f.read_bytes() == (tmp_path / "images" / f.name).read_bytes()
    other = make_synthetic_vqa(tmp_path / "other", n_images=N, seed=4)
    assert [s.answer for s in _all(other)] != [s.answer for s in _all(splits)]


def test_split_by_image(generated):
    _, splits = generated
    train = {s.extra["image_id"] for s in splits["train"]}
    test = {s.extra["image_id"] for s in splits["test"]}
    assert train and test and not train & test
    assert len(train | test) == N
    assert len(test) == round(N * 0.25)
    assert all(s.split == name for name, lst in splits.items() for s in lst)


def test_answers_valid_and_balanced(generated):
    _, splits = generated
    samples = _all(splits)
    closed = [s.answer for s in samples if s.answer_type == "closed"]
    assert set(closed) == {"yes", "no"}
    assert 0.4 <= Counter(closed)["yes"] / len(closed) <= 0.6
    qids = [s.extra["qid"] for s in samples]
    assert len(set(qids)) == len(qids)
    for s in samples:
        assert s.answer_type in ANSWER_TYPES and s.source == "synthetic"
        assert s.answer == s.answer.lower()
        qt = s.extra["question_type"]
        assert qt in ("PRES", "MODALITY", "POS")
        if qt == "POS":
            assert s.answer_type == "open" and s.answer in ("left", "right")
        elif qt == "MODALITY" and s.answer_type == "open":
            assert s.answer in MODALITIES
        else:
            assert s.answer in ("yes", "no")
    by_image: dict[str, dict] = {}
    for s in samples:
        by_image.setdefault(s.extra["image_id"], {})[(s.extra["question_type"], s.answer_type)] = s
    for qs in by_image.values():  # a side question exactly when a lesion is present
        assert (("POS", "open") in qs) == (qs[("PRES", "closed")].answer == "yes")
    assert {s.answer for s in samples if s.extra["question_type"] == "MODALITY"
            and s.answer_type == "open"} == set(MODALITIES)


def test_images_exist_inside_root(generated):
    root, splits = generated
    paths = {p for s in _all(splits) for p in s.images}
    assert len(paths) == N
    for p in paths:
        path = Path(p)
        assert path.is_absolute() and path.is_relative_to(root.resolve() / "images")
        with Image.open(path) as im:
            assert im.size == (224, 224)


def test_reuse_and_regeneration(tmp_path):
    make_synthetic_vqa(tmp_path, n_images=8, seed=0)
    pngs = sorted((tmp_path / "images").glob("*.png"))
    past = 946_684_800 * 10**9  # 2000-01-01: any rewrite would stamp the files with the current time
    for f in pngs:
        os.utime(f, ns=(past, past))
    make_synthetic_vqa(tmp_path, n_images=8, seed=0)
    assert {f.stat().st_mtime_ns for f in pngs} == {past}
    first = pngs[0].read_bytes()
    make_synthetic_vqa(tmp_path, n_images=6, seed=1)
    assert len(list((tmp_path / "images").glob("*.png"))) == 6  # stale files removed
    assert pngs[0].read_bytes() != first
    assert json.loads((tmp_path / "images" / "manifest.json").read_text())["seed"] == 1
    pngs[1].unlink()  # a missing file triggers regeneration too
    make_synthetic_vqa(tmp_path, n_images=6, seed=1)
    assert pngs[1].is_file()


def test_size_and_description(tmp_path):
    splits = make_synthetic_vqa(tmp_path, n_images=115)
    assert len(_all(splits)) >= 400
    text = describe_synthetic()
    assert "SYNTHETIC" in text and "\n" not in text


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_synthetic_vqa(tmp_path, n_images=0)
    with pytest.raises(ValueError):
        make_synthetic_vqa(tmp_path, test_fraction=1.0)
