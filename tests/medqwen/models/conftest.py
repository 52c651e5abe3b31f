from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def gray_image() -> Image.Image:
    """A 300x260 grayscale image (medical images are often single-channel, non-square)."""
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(260, 300) * 255).astype("uint8"), mode="L")


@pytest.fixture
def rgb_image() -> Image.Image:
    """A 224x224 RGB image."""
    rng = np.random.RandomState(1)
    return Image.fromarray((rng.rand(224, 224, 3) * 255).astype("uint8"), mode="RGB")
