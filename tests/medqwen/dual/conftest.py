"""Synthetic colour-classification data: a task whose class is visible (the image's dominant colour)."""

from __future__ import annotations

import numpy as np
import pytest

from medqwen.data.schema import Sample
from medqwen.eval.zero_shot_tasks import ZeroShotTask

COLOURS = ["red", "green", "blue"]


def colour_task(n_per_class: int = 4, seed: int = 0, size: int = 32) -> ZeroShotTask:
    rng = np.random.RandomState(seed)
    samples, labels = [], []
    for i in range(n_per_class):
        for c in range(len(COLOURS)):
            image = (rng.rand(size, size, 3) * 60).astype("uint8")
            image[..., c] += 180
            samples.append(Sample([], "", COLOURS[c], "closed", "colours", "test", {"i": i}, image))
            labels.append(c)
    return ZeroShotTask("colours", list(COLOURS), {c: [c, f"{c} colour"] for c in COLOURS},
                        ["a {} image.", "{}."], samples, labels)


@pytest.fixture
def colours() -> ZeroShotTask:
    return colour_task()
