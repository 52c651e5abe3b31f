"""Saving and loading the trained, non-adapter parts of a :class:`~medqwen.models.VisionLanguageModel`.

A saved folder holds ``medqwen_vlm.json`` (model type, how to rebuild the frozen base, system prompt,
groups) and ``trainable.safetensors`` (the groups' parameters and normalisation statistics, keyed by
their name in the model without adapters). Adapters are saved by their own library, not here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

if TYPE_CHECKING:
    from .base import VisionLanguageModel

CONFIG_NAME = "medqwen_vlm.json"
WEIGHTS_NAME = "trainable.safetensors"
FORMAT_VERSION = 1
NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # saved with their group


def named_group_params(model: VisionLanguageModel, groups: Sequence[str]) -> dict[str, nn.Parameter]:
    """Parameters of the named groups by their name in the model *without* adapters: an adapter
    layer that wraps a module as ``.base`` (SSLoRA) does not change the saved names, so a
    language model trained before an adapter was attached saves and loads the same way."""
    from sslora import SSLoRALayer

    wrapped = [f"{name}.base." for name, m in model.named_modules() if name and isinstance(m, SSLoRALayer)]
    by_id = {}
    for n, p in model.named_parameters(remove_duplicate=True):
        for prefix in wrapped:
            if n.startswith(prefix):
                n = prefix[: -len("base.")] + n[len(prefix):]
                break
        by_id[id(p)] = n
    all_groups = model.trainable_groups()
    out: dict[str, nn.Parameter] = {}
    for g in groups:
        if g not in all_groups:
            raise KeyError(f"unknown group {g!r}; known: {sorted(all_groups)}")
        for p in all_groups[g]:
            out[by_id[id(p)]] = p
    return out


def group_buffers(model: VisionLanguageModel, groups: Sequence[str]) -> dict[str, Tensor]:
    """Persistent buffers of the named groups' modules (e.g. BatchNorm running statistics)."""
    modules = model._group_modules()
    out = {}
    for g in groups:
        for module in modules.get(g, []):
            prefix = next(n for n, m in model.named_modules() if m is module)
            for name, buf in module.named_buffers():
                if name.rsplit(".", 1)[-1] in NORM_STATISTICS:  # not adapter buffers, not rotary caches
                    out[f"{prefix}.{name}" if prefix else name] = buf.detach().to("cpu").contiguous().clone()
    return out


def save_groups(model: VisionLanguageModel, save_dir: str | Path, groups: Sequence[str]) -> Path:
    """What :meth:`VisionLanguageModel.save_pretrained` writes (see the module docstring)."""
    path = Path(save_dir)
    path.mkdir(parents=True, exist_ok=True)
    params = named_group_params(model, groups)
    tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in params.items()}
    tensors.update(group_buffers(model, groups))
    save_file(tensors, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    config = {
        "format": "medqwen-vlm",
        "format_version": FORMAT_VERSION,
        "model_type": model.model_type,
        "base": model.base_config,
        "system_prompt": model.system_prompt,
        "groups": list(groups),
        "weights": WEIGHTS_NAME,
        **model.extra_config(),
    }
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_groups(model: VisionLanguageModel, load_dir: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load what :func:`save_groups` wrote into `model` (same architecture); returns the config."""
    path = Path(load_dir)
    config = json.loads((path / CONFIG_NAME).read_text())
    if config.get("format") != "medqwen-vlm":
        raise ValueError(f"{path / CONFIG_NAME} is not a medqwen-vlm config")
    state = load_file(str(path / config.get("weights", WEIGHTS_NAME)))
    expected = named_group_params(model, config["groups"])
    buffers = dict(model.named_buffers())
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected) - set(buffers)
    if strict and (missing or unexpected):
        raise KeyError(f"weights do not match: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    with torch.no_grad():
        for name, tensor in state.items():
            if name in buffers and name not in expected:
                buffers[name].copy_(tensor.to(buffers[name].dtype))
                continue
            if name in expected:
                p = expected[name]
                if p.shape != tensor.shape:
                    raise ValueError(f"{name}: saved shape {tuple(tensor.shape)} != {tuple(p.shape)}")
                p.copy_(tensor.to(p.dtype))
    model.system_prompt = config.get("system_prompt")
    return config


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over a saved model folder's weight files (``*.safetensors``, in name order): which
    build of a model a run started from (the same recipe trained on another machine differs)."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights to fingerprint")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()
