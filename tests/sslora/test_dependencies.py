"""`pip install .` is the sslora library alone: its import and its declared dependencies leave out the
medqwen extra (transformers, accelerate, ...)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MEDQWEN_EXTRA = {"transformers", "accelerate", "pillow", "gguf", "tensorboard", "matplotlib"}


def test_import_sslora_does_not_import_the_medqwen_extra():
    code = ("import sys, sslora; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'accelerate', 'PIL', 'gguf', "
            "'tensorboard', 'matplotlib', 'medqwen'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_core_dependencies_leave_out_the_medqwen_extra():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not _names(project["dependencies"]) & MEDQWEN_EXTRA
    assert _names(project["optional-dependencies"]["medqwen"]) >= MEDQWEN_EXTRA


def _names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group().lower() for r in requirements}
