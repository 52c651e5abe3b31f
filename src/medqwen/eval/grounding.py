"""Grounding probe sets: does the model answer from the image?

For each probe set (closed questions built from labels of images never trained on, see
:mod:`medqwen.data.grounding`) the evaluator yields

- ``acc``: the model's accuracy, candidates ranked by likelihood (the registered "rank" evaluator,
  :func:`medqwen.eval.evaluators.evaluate_ranking`);
- ``blank_acc``: the same model with the image features zeroed (what the question alone gives);
- ``probe_acc``: a linear probe on the frozen image features answering the same questions — the
  ceiling the image tower allows (logistic regression on mean-pooled features, trained on the
  labelled alignment-side images, never on probe images);
- ``n`` and ``majority`` (the share of the most common answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .evaluators import EvalSettings, evaluate_ranking, feature_cache_for


@dataclass
class ProbeSet:
    """A probe set: evaluation questions + the labelled training images of its linear probe."""

    name: str
    task: str  # "modality" | "region"
    questions: list = field(default_factory=list)  # Samples with extra candidates / label / asked
    probe_train: list = field(default_factory=list)  # (Sample, class) pairs on alignment-side images


# (name, task, style, wording): the first three ask unseen images in the phrasings of the alignment
# data; the last asks the same images in phrasings never trained on (robustness to wording).
PROBE_SETS = (
    ("roco_modality_yesno", "modality", "yesno", "train"),
    ("roco_modality_choice", "modality", "choice", "train"),
    ("roco_region_yesno", "region", "yesno", "train"),
    ("roco_modality_yesno_new_wording", "modality", "yesno", "probe"),
)


def build_probe_sets(data_root: str | Path, *, seed: int = 0, limit: int | None = None) -> dict[str, ProbeSet]:
    """The default probe sets on ``data_root`` (the layout of ../shared/data): ROCOv2 valid images
    (never trained on) asked about modality (yes/no, multiple choice) and body region (yes/no), see
    ``PROBE_SETS``; linear probes trained on the ROCOv2 train images (+ VQA-RAD organs for region)."""
    from medqwen.data import read_roco, read_vqa_rad
    from medqwen.data.grounding import VQA_RAD_ORGANS, read_roco_grounding, roco_label

    root = Path(data_root)
    roco, vqa_rad = root / "rocov2_sample", root / "vqa_rad"
    train_images = read_roco(roco, "train")
    sides = {task: [(s, lab) for s in train_images if (lab := roco_label(s, task)) is not None] for task in ("modality", "region")}
    if vqa_rad.is_dir():
        seen = set()
        for s in read_vqa_rad(vqa_rad, "train"):
            organ = VQA_RAD_ORGANS.get(str(s.extra.get("image_organ", "")).strip().upper())
            if organ and s.images[0] not in seen:
                seen.add(s.images[0])
                sides["region"].append((s, organ))
    sets = {}
    for name, task, style, wording in PROBE_SETS:
        questions = list(read_roco_grounding(roco, "val", task=task, style=style, wording=wording, seed=seed))
        sets[name] = ProbeSet(name, task, questions[:limit] if limit else questions, sides[task])
    return sets


def pooled_features(model, samples: Sequence, cache=None) -> torch.Tensor:
    """(N, C) mean over image tokens of the frozen image features (one image per sample)."""
    from medqwen.training.batches import FeatureCache

    cache = cache or FeatureCache(model)
    return torch.stack([f.float().mean(dim=(0, 1)) for f in cache.get(samples)])


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, steps: int = 100) -> tuple:
    """Multinomial logistic regression (standardised inputs, L2 penalty), full-batch L-BFGS.
    Returns (mean, std, weight, bias); predict with :func:`predict_logistic`."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mean) / std).double()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return mean, std, weight.detach(), bias.detach()


def predict_logistic(model: tuple, x: torch.Tensor) -> torch.Tensor:
    mean, std, weight, bias = model
    return (((x - mean) / std).double() @ weight.T + bias).argmax(-1)


def linear_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2_grid=(1e-4, 1e-3, 1e-2, 1e-1), folds: int = 5, seed: int = 0):
    """Logistic regression with its L2 weight chosen by k-fold cross-validation on (x, y) only."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    best, best_acc = l2_grid[0], -1.0
    for l2 in l2_grid:
        correct = 0
        for k in range(folds):
            held = order[k::folds]
            keep = torch.ones(len(y), dtype=torch.bool)
            keep[held] = False
            fitted = fit_logistic_regression(x[keep], y[keep], num_classes, l2)
            correct += int((predict_logistic(fitted, x[held]) == y[held]).sum())
        if correct / len(y) > best_acc:
            best, best_acc = l2, correct / len(y)
    return fit_logistic_regression(x, y, num_classes, best), best


def probe_answers(questions: Sequence, predicted: Sequence[str]) -> list[str]:
    """Answer label questions from a predicted image class: yes/no -> whether it is the asked class."""
    out = []
    for q, cls in zip(questions, predicted):
        out.append(("yes" if cls == q.extra["asked"] else "no") if "asked" in q.extra else cls)
    return out


def accuracy(predictions: Sequence[str], questions: Sequence) -> float:
    return sum(p == q.answer for p, q in zip(predictions, questions)) / max(1, len(questions))


def evaluate_probe_set(model, probe: ProbeSet, *, cache=None, batch_size: int = 32, linear: bool = True) -> Iterator[tuple[str, Any]]:
    """Yield (name, value): acc and blank_acc (the registered "rank" evaluator, with and without the
    image), probe_acc (if the model exposes image features), n, majority."""
    from medqwen.data.grounding import CLASSES

    start = time.perf_counter()
    questions = probe.questions
    vlm = getattr(model, "base_model", model)
    cache = feature_cache_for(vlm, cache)  # shared by both passes and the linear probe
    settings = EvalSettings(batch_size=batch_size, cache=cache)
    scored = dict(evaluate_ranking(model, questions, settings))
    blank = dict(evaluate_ranking(model, questions, replace(settings, blank_images=True)))
    yield "acc", scored["acc"]
    yield "blank_acc", blank["acc"]
    if linear and vlm.supports_image_features and probe.probe_train:
        classes = CLASSES[probe.task]
        x = pooled_features(vlm, [s for s, _ in probe.probe_train], cache)
        y = torch.tensor([classes.index(c) for _, c in probe.probe_train])
        fitted, l2 = linear_probe(x, y, len(classes))
        test_x = pooled_features(vlm, questions, cache)
        predicted = [classes[i] for i in predict_logistic(fitted, test_x).tolist()]
        yield "probe_acc", accuracy(probe_answers(questions, predicted), questions)
        yield "probe_l2", l2
        yield "probe_train_n", len(y)
    yield "n", scored["n"]
    yield "majority", scored["majority"]
    yield "records", [{**r, "blank_pred": b["pred"], "label": q.extra.get("label")}
                      for q, r, b in zip(questions, scored["records"], blank["records"])]
    yield "seconds", time.perf_counter() - start
