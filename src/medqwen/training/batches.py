"""Samples -> model batches, with the frozen image encoder's features computed once per image."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from medqwen.data import Sample, load_image


def image_key(sample: Sample) -> str | None:
    """A stable key of a sample's image(s): the file paths, or an in-memory image's identity."""
    if sample.images:
        return "|".join(sample.images)
    if sample.image is not None:
        return f"mem:{sample.source}:{sample.split}:{sample.extra.get('index', id(sample.image))}"
    return None


class FeatureCache:
    """Frozen image features per image key (MedQwen-mini: EfficientNet-Lite0, (n, 49, 1280)).

    Computing them once per run instead of once per step halves the step time on CPU; valid only
    while the vision tower is frozen, which the trainer checks before using the cache.

    Features of image *files* are also kept on disk (``disk_dir``; default ``$MEDQWEN_FEATURE_CACHE``
    or ``~/.cache/medqwen/features``; ``MEDQWEN_FEATURE_CACHE=off`` disables it), keyed by the file's
    path, size and modification time and by a hash of the vision tower's weights, so later runs and
    evaluations skip the encoder. Stored in fp32 safetensors: reading gives the same bits.
    """

    def __init__(self, model, disk_dir: str | os.PathLike | None = None):
        self.model = model
        self.features: dict[str, torch.Tensor] = {}
        setting = os.environ.get("MEDQWEN_FEATURE_CACHE", "")
        if disk_dir is None and setting.lower() not in ("off", "0", "false", "no"):
            disk_dir = setting or Path.home() / ".cache" / "medqwen" / "features"
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._tower_digest: str | None = None

    def _disk_path(self, sample: Sample) -> Path | None:
        if self.disk_dir is None or not sample.images:
            return None
        if self._tower_digest is None:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(f"{type(self.model).__name__}:{getattr(self.model, 'image_size', '')}".encode())
            for name, tensor in sorted(self.model.vision_tower.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._tower_digest = digest.hexdigest()
        key = hashlib.blake2b(digest_size=16)
        key.update(self._tower_digest.encode())
        for path in sample.images:
            stat = os.stat(path)
            key.update(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        name = key.hexdigest()
        return self.disk_dir / name[:2] / f"{name}.safetensors"

    def _read(self, path: Path | None) -> torch.Tensor | None:
        if path is None or not path.is_file():
            return None
        try:
            return load_file(str(path))["features"]
        except Exception:  # a torn or foreign file: recompute (and overwrite) it
            return None

    def _write(self, path: Path | None, features: torch.Tensor) -> None:
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"features": features.contiguous()}, str(tmp))
            os.replace(tmp, path)
        except OSError:  # a read-only or full disk only costs speed
            pass

    def has_stored(self, sample: Sample) -> bool:
        """Features of this sample's image (these file versions) are in memory or on disk: its files
        decoded before, so the check before training need not decode them again."""
        key = image_key(sample)
        if key is None or key in self.features:
            return key is not None
        path = self._disk_path(sample)
        return path is not None and path.is_file()

    def get(self, samples: Sequence[Sample]) -> list[torch.Tensor | None]:
        todo = {}
        for sample in samples:
            key = image_key(sample)
            if key is not None and key not in self.features and key not in todo:
                stored = self._read(self._disk_path(sample))
                if stored is not None:
                    self.features[key] = stored
                else:
                    todo[key] = sample
        if todo:
            images, owners = [], []
            for key, sample in todo.items():
                pictures = sample_images(sample)
                images += pictures
                owners += [key] * len(pictures)
            # one image per encoder call: batched convolutions may round differently with the batch's
            # composition, and resumed runs must see bit-identical features
            encoded = torch.cat([self.model.encode_images([image]) for image in images])
            for key, sample in todo.items():
                self.features[key] = encoded[[i for i, k in enumerate(owners) if k == key]]
                self._write(self._disk_path(sample), self.features[key])
        return [self.features.get(image_key(s)) if image_key(s) else None for s in samples]


def sample_images(sample: Sample) -> list:
    """A sample's images as PIL (its files, or its one in-memory image)."""
    return [load_image(sample, i) for i in range(len(sample.images) or (1 if sample.image is not None else 0))]


def supports_feature_cache(model) -> bool:
    """Cached image features are valid now: the model takes them, and its vision tower is frozen."""
    return model.supports_image_features and not any(p.requires_grad for p in model.vision_tower.parameters())


def make_batch(model, samples: Sequence[Sample], *, with_answers: bool, cache: FeatureCache | None) -> dict[str, Any]:
    """build_inputs for a list of samples (answers as labels when `with_answers`)."""
    return make_batch_from(model, samples, [s.answer for s in samples] if with_answers else None, cache=cache)


def make_batch_from(
    model, samples: Sequence[Sample], answers: Sequence[str] | None, *, cache: FeatureCache | None, padding_side: str | None = None
) -> dict[str, Any]:
    """build_inputs for samples' images and questions with the given answers (labels) or none."""
    prompts = [s.question for s in samples]
    answers = list(answers) if answers is not None else None
    if cache is not None:
        return model.build_inputs(None, prompts, answers, image_features=cache.get(samples), padding_side=padding_side)
    return model.build_inputs([sample_images(s) for s in samples], prompts, answers, padding_side=padding_side)
