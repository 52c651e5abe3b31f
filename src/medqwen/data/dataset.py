"""Torch-facing wrappers: a Dataset over samples and a seeded mixer."""
from __future__ import annotations

import random
from typing import Sequence

from torch.utils.data import Dataset

from .schema import Sample


class VQADataset(Dataset):
    """A map-style torch Dataset that returns :class:`Sample` objects as-is.

    Tokenisation and image processing belong to the model's collator; pass
    ``collate_fn=collate_samples`` (or ``VQADataset.collate``) to a DataLoader
    because torch's default collate cannot batch dataclasses.
    """

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @staticmethod
    def collate(batch: list[Sample]) -> list[Sample]:
        return collate_samples(batch)


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """Identity collate: a batch is just the list of samples."""
    return list(batch)


def mix_datasets(
    sample_lists: Sequence[Sequence[Sample]],
    weights: Sequence[float] | None = None,
    seed: int = 0,
    total: int | None = None,
) -> list[Sample]:
    """Combine sample lists into one shuffled list, deterministic in ``seed``.

    ``weights=None`` concatenates everything once. Otherwise ``weights`` are
    mixture proportions (normalised to sum 1) of an output of ``total``
    samples (default: the summed input size): dataset i contributes
    ``round(p_i * total)`` samples, taken as whole passes over a shuffled copy
    plus a random remainder, so within a dataset every sample appears
    ``n // len`` or ``n // len + 1`` times (up- or downsampling). Repeated
    samples are the same objects, so treat them as read-only.
    """
    rng = random.Random(seed)
    lists = [list(s) for s in sample_lists]
    if weights is None:
        out = [s for lst in lists for s in lst]
        rng.shuffle(out)
        return out
    if len(weights) != len(lists):
        raise ValueError(f"{len(weights)} weights for {len(lists)} datasets")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    total = sum(map(len, lists)) if total is None else total
    counts = _apportion([w / sum(weights) for w in weights], total)
    out: list[Sample] = []
    for lst, n in zip(lists, counts):
        if n and not lst:
            raise ValueError("a dataset with positive weight is empty")
        order = list(range(len(lst)))
        while n > 0:
            rng.shuffle(order)
            out.extend(lst[i] for i in order[:n])
            n -= len(order)
    rng.shuffle(out)
    return out


def _apportion(props: list[float], total: int) -> list[int]:
    # Largest remainder: counts add up to exactly ``total``.
    raw = [p * total for p in props]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
