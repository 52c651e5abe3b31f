"""Fine-tuning methods for a DualEncoder: which modules, what is trainable, save / load.

Methods (one name each, as in benchmarks/results/zero_shot.json):

- ``aligned``: nothing trainable (the aligned model as it is);
- ``heads``: only the projection heads and temperature;
- ``lora``: plain LoRA through SSLoRA's layer (one expert, top-1, zero init, scale 2; exactly
  ``medqwen.training.config.adapter_config(kind="lora")``);
- ``sslora``: SSLoRA N-of-k spectral experts (sslora's public API);
- ``full_ft``: every tower parameter;
- ``full_moe``: a full-rank upcycled MoE (:mod:`.full_moe`) on the same targeted modules.

The targeted modules are the towers' nn.Linear and 1x1 nn.Conv2d layers (stride 1, groups 1),
minus the heads and minus layers too small for rank r (``min(m, n) < r``, e.g. EfficientNet-Lite0's
16/24-channel convs: SSLoRA's spectral segments need ``min(m, n) // N >= r / N``); LoRA, SSLoRA and the MoE get the same list.
Heads are trained too in every fine-tuning method unless ``train_heads=False``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medqwen.errors import ConfigError

from .base import DualEncoder
from .full_moe import upcycle

METHODS = ("aligned", "heads", "lora", "sslora", "full_ft", "full_moe")
TOWERS = ("image", "text")
METHOD_FILE = "dual_method.json"
ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "trainable.safetensors"


@dataclass
class MethodSpec:
    """One fine-tuning method and its hyper-parameters (saved next to the weights)."""

    method: str
    r: int = 32
    num_experts: int = 8
    top_k: int = 2
    towers: list[str] = field(default_factory=lambda: list(TOWERS))
    train_heads: bool = True
    seed: int = 0
    aux_loss_coef: float = 0.01
    lora_scaling: float = 2.0
    eta: float = 0.1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r}; known: {list(METHODS)}")
        unknown = set(self.towers) - set(TOWERS)
        if unknown or not self.towers:
            raise ConfigError(f"towers {self.towers!r} must be a non-empty subset of {list(TOWERS)}")


def is_adaptable(module: nn.Module) -> bool:
    """nn.Linear, or a 1x1 nn.Conv2d with groups 1, stride 1, no padding, no dilation (a linear map per pixel)."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and tuple(module.stride) == (1, 1) and module.padding in ((0, 0), "valid") and tuple(module.dilation) == (1, 1))


def _shape(module: nn.Module) -> tuple[int, int]:
    return (module.out_channels, module.in_channels) if isinstance(module, nn.Conv2d) else (module.out_features, module.in_features)


def tower_targets(model: DualEncoder, towers: list[str] | tuple[str, ...] = TOWERS, *, r: int = 32,
                  exclude: tuple[str, ...] = ("pooler",)) -> list[str]:
    """Qualified names (in ``model``) of the adaptable layers of the chosen towers, heads and modules with a
    name part in ``exclude`` left out (BERT's pooler: unused by mean / CLS pooling), with ``min(m, n) >= r``
    (for r divisible by N the same as room for N spectral segments of r / N)."""
    prefixes = [(model.image_tower_name if t == "image" else model.text_tower_name) + "." for t in towers]
    names = []
    for name, module in model.named_modules():
        if not name.startswith(tuple(prefixes)) or (name + ".").startswith(model.head_names) or not is_adaptable(module):
            continue
        if set(name.split(".")) & set(exclude):
            continue
        m, n = _shape(module)
        if min(m, n) >= r:
            names.append(name)
    return names


def sslora_config(spec: MethodSpec, targets: list[str]):
    """The SSLoRAConfig of ``lora`` / ``sslora`` for these targets."""
    from sslora import SSLoRAConfig

    from medqwen.training.config import adapter_config

    if spec.method == "lora":
        return adapter_config({"kind": "lora", "r": spec.r, "target_modules": targets, "seed": spec.seed,
                               "scaling": spec.lora_scaling})
    return SSLoRAConfig(r=spec.r, num_experts=spec.num_experts, top_k=spec.top_k, target_modules=targets,
                        init="spectral", scaling="optimal", eta=spec.eta, aux_loss_coef=spec.aux_loss_coef, seed=spec.seed)


def unwrap(model: nn.Module) -> DualEncoder:
    """The DualEncoder inside an SSLoRAModel (or the model itself)."""
    return getattr(model, "base_model", model) if not isinstance(model, DualEncoder) else model


def apply_method(model: DualEncoder, spec: MethodSpec) -> nn.Module:
    """Prepare ``model`` (in place) for ``spec``; returns the module to train (an SSLoRAModel for lora /
    sslora, else ``model``). On a meta-device model nothing is computed (parameter counting)."""
    targets = tower_targets(model, spec.towers, r=spec.r)
    for p in model.parameters():
        p.requires_grad_(False)
    trained: nn.Module = model
    if spec.method in ("lora", "sslora"):
        from sslora import get_sslora_model

        trained = get_sslora_model(model, sslora_config(spec, targets))
    elif spec.method == "full_ft":
        for tower in spec.towers:
            for p in (model.image_tower if tower == "image" else model.text_tower).parameters():
                p.requires_grad_(True)
    elif spec.method == "full_moe":
        upcycle(model, targets, spec.num_experts, spec.top_k, seed=spec.seed)
    if spec.method == "heads" or (spec.method != "aligned" and spec.train_heads):
        for p in model.head_parameters().values():
            p.requires_grad_(True)
    return trained


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_finetuned(trained: nn.Module, directory: str | os.PathLike, spec: MethodSpec) -> None:
    """lora / sslora: the adapter (``save_pretrained``) + trainable heads; others: every trainable tensor."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dual = unwrap(trained)
    if spec.method in ("lora", "sslora"):
        trained.save_pretrained(directory / ADAPTER_DIR)
        tensors = {n: p for n, p in dual.head_parameters().items() if p.requires_grad}
    else:
        tensors = {n: p for n, p in dual.named_parameters() if p.requires_grad}
    save_file({n: t.detach().contiguous() for n, t in tensors.items()}, str(directory / WEIGHTS_FILE))
    (directory / METHOD_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")


def load_finetuned(model: DualEncoder, directory: str | os.PathLike) -> nn.Module:
    """Rebuild a fine-tuned model from the same base DualEncoder and a ``save_finetuned`` folder (no SVD)."""
    directory = Path(directory)
    spec = MethodSpec(**json.loads((directory / METHOD_FILE).read_text()))
    if spec.method in ("lora", "sslora"):
        from sslora import SSLoRAModel

        trained: nn.Module = SSLoRAModel.from_pretrained(model, directory / ADAPTER_DIR)
    else:
        trained = apply_method(model, spec)
    tensors = load_file(str(directory / WEIGHTS_FILE))
    params = dict(unwrap(trained).named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise ValueError(f"{directory / WEIGHTS_FILE} holds tensors this model lacks: {missing[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    return trained.eval()
