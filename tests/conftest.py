import os
from pathlib import Path

import pytest
import torch

# Tests never touch the user's cache or the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SSLORA_CACHE", str(tmp_path_factory.mktemp("sslora-cache")))
    monkeypatch.setenv("MEDQWEN_FEATURE_CACHE", str(tmp_path_factory.mktemp("feature-cache")))
    torch.manual_seed(0)
