"""Shared fixtures: the real data folder (never copied) and tiny image files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

# tests/medqwen/data/conftest.py -> parents[3] is the repo root; the data
# lives next to the repo, in ../shared/data.
SHARED_DATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def data_dir(shared_data: Path):
    """``data_dir("vqa_rad")`` -> path, skipping if that dataset is absent."""

    def get(name: str) -> Path:
        path = shared_data / name
        if not path.exists():
            pytest.skip(f"{name} not present in {shared_data}")
        return path

    return get


def _write_image(path: Path, size: tuple[int, int] = (8, 6), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def rad_dir(tmp_path: Path):
    """A tiny VQA-RAD-format folder; call with rows to write trainset.json."""
    _write_image(tmp_path / "images" / "a.jpg")
    _write_image(tmp_path / "images" / "b.jpg")

    def make(rows: list[dict]) -> Path:
        _write_json(tmp_path / "trainset.json", rows)
        return tmp_path

    return make


def _rad_row(qid: int = 1, **overrides) -> dict:
    row = {"qid": qid, "image_name": "a.jpg", "image_organ": "HEAD", "answer": "Yes",
           "answer_type": "CLOSED", "question_type": "PRES",
           "question": "Is there a lesion?", "phrase_type": "freeform"}
    row.update(overrides)
    return row


# Helpers are exposed as fixtures (not imported) so the tests do not depend
# on which "conftest" module pytest last put in sys.modules.
@pytest.fixture
def write_image():
    return _write_image


@pytest.fixture
def write_json():
    return _write_json


@pytest.fixture
def write_jsonl():
    return _write_jsonl


@pytest.fixture
def rad_row():
    """``rad_row(qid, **overrides)`` -> a valid VQA-RAD record."""
    return _rad_row
