"""SSLoRAModel: inject, freeze, save/load, disable, merge, unload, routing statistics."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from ._io import atomic_save_safetensors
from .cache import SpectralCache
from .config import SSLoRAConfig
from .inject import build_layer, find_targets, replace_module
from .layer import RoutingContext, SSLoRALayer

WEIGHTS_NAME = "adapter_model.safetensors"
_ADAPTER_PREFIXES = ("router.", "experts.", "residual.", "spectral_indices")


class SSLoRAModel(nn.Module):
    """A model with SSLoRA layers injected. `forward` and attribute access pass through to it.

    In training mode, when the wrapped model returns a `loss` and `config.add_aux_loss_to_loss`,
    `aux_loss()` is added to it, so a Hugging Face `Trainer` trains the router balance too.
    """

    def __init__(self, model: nn.Module, config: SSLoRAConfig, context: RoutingContext):
        super().__init__()
        self.base_model = model
        self.sslora_config = config
        self._context = context

    # ------------------------------------------------------------------ construction
    @classmethod
    def _inject(cls, model, config, *, cache: SpectralCache | None, initialise: bool) -> "SSLoRAModel":
        targets = find_targets(model, config)
        for param in model.parameters():
            param.requires_grad_(False)
        context = RoutingContext()
        progress = tqdm(targets, desc="SSLoRA init", unit="layer", disable=None if len(targets) > 16 else True)
        for name, module in progress:
            layer = build_layer(name, module, config, context=context, cache=cache, initialise=initialise)
            layer.compute_aux_loss = config.aux_loss_coef > 0
            replace_module(model, name, layer)
        wrapped = cls(model, config, context)
        wrapped.set_adapter_trainable(True)
        return wrapped

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, directory: str | os.PathLike, *, is_trainable: bool = False
    ) -> "SSLoRAModel":
        """Load an adapter saved by save_pretrained onto a fresh base model. Never computes an SVD."""
        config, payload = SSLoRAConfig.load(directory)
        wrapped = cls._inject(model, config, cache=None, initialise=False)
        wrapped.load_adapter_weights(directory)
        wrapped.set_adapter_trainable(is_trainable)
        wrapped.loaded_version = payload.get("library_version", "")
        return wrapped

    def load_adapter_weights(self, directory: str | os.PathLike) -> None:
        """Copy the tensors of a saved adapter (same targets and shapes) into this one, in place."""
        path = os.path.join(directory, WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory!s}")
        expected = self._adapter_tensors()
        with safe_open(path, framework="pt") as handle:
            stored = set(handle.keys())
            missing, unexpected = sorted(set(expected) - stored), sorted(stored - set(expected))
            if missing or unexpected:
                raise ValueError(
                    f"{path} does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                    f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
                )
            with torch.no_grad():
                for key, target in expected.items():
                    value = handle.get_tensor(key)
                    if value.shape != target.shape:
                        raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
                    target.copy_(value)

    # ------------------------------------------------------------------ pass-through
    @contextlib.contextmanager
    def padding_mask(self, attention_mask: torch.Tensor | None) -> Iterator[None]:
        """Inside the block, layers whose input is (B, L, n) with (B, L) = attention_mask.shape
        leave padding (mask 0) out of the load-balancing loss and routing statistics. `forward`
        does this itself; use it when the adapted model is called through another module."""
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
        previous, self._context.attention_mask = self._context.attention_mask, mask
        try:
            yield
        finally:
            self._context.attention_mask = previous

    def forward(self, *args, **kwargs):
        with self.padding_mask(kwargs.get("attention_mask")):
            output = self.base_model(*args, **kwargs)
        config = self.sslora_config
        if self.training and config.add_aux_loss_to_loss and config.aux_loss_coef > 0:
            loss = getattr(output, "loss", None)
            if loss is not None:
                output.loss = loss + self.aux_loss()
        return output

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base_model, name)

    # ------------------------------------------------------------------ adapter state
    def sslora_layers(self) -> dict[str, SSLoRALayer]:
        return {n: m for n, m in self.base_model.named_modules() if isinstance(m, SSLoRALayer)}

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor of everything the adapter owns (experts, routers, residual factors)."""
        tensors = {}
        for name, layer in self.sslora_layers().items():
            for key, value in layer.state_dict(keep_vars=True).items():
                key = key.replace("_merged_residual.", "residual.")
                if key.startswith(_ADAPTER_PREFIXES):
                    tensors[f"{name}.{key}"] = value
        return tensors

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write adapter_config.json + adapter_model.safetensors (atomically; no pickle)."""
        os.makedirs(directory, exist_ok=True)
        layers = {
            name: {"scaling": layer.scaling, "shape": list(layer.base.weight.shape[:2])}
            for name, layer in self.sslora_layers().items()
        }
        tensors = self._adapter_tensors()
        atomic_save_safetensors(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt", "library": "sslora", "version": __version__})
        self.sslora_config.save(directory, extra={"library_version": __version__, "layers": layers})

    def set_adapter_trainable(self, trainable: bool) -> None:
        """Switch gradients of every adapter parameter (experts; routers when N > 1) on or off."""
        for layer in self.sslora_layers().values():
            for param in (layer.router.weight, layer.experts.lora_A, layer.experts.lora_B):
                param.requires_grad_(False)
            for param in layer.adapter_parameters():
                param.requires_grad_(trainable)

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts (frozen residual factors are buffers, not counted)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------------ losses & statistics
    def aux_loss(self) -> torch.Tensor:
        """aux_loss_coef * load-balancing loss of the last training forward, averaged over layers."""
        losses = [layer.last_aux_loss for layer in self.sslora_layers().values() if layer.last_aux_loss is not None]
        if not losses or self.sslora_config.aux_loss_coef == 0:
            return torch.zeros((), device=next(self.parameters()).device)
        return self.sslora_config.aux_loss_coef * torch.stack(losses).mean()

    def record_routing_stats(self, enabled: bool = True) -> None:
        """Start (or stop) accumulating routing statistics in every layer, in training and eval.

        Off by default: the bookkeeping costs a few tensor ops per layer call, which decoding
        pays once per layer per token. Read them with `routing_stats()`.
        """
        for layer in self.sslora_layers().values():
            layer.record_stats = enabled

    @contextlib.contextmanager
    def recording_routing(self) -> Iterator[None]:
        """Routing statistics on inside the block, then back to what each layer had before."""
        layers = list(self.sslora_layers().values())
        previous = [layer.record_stats for layer in layers]
        self.record_routing_stats(True)
        try:
            yield
        finally:
            for layer, was in zip(layers, previous):
                layer.record_stats = was

    def routing_stats(self, reset: bool = False) -> dict[str, dict[str, list[float]]]:
        """Per layer, per expert: tokens routed (`counts`), their share (`fraction`) and the mean gate
        weight of tokens that chose the expert (`mean_gate`), accumulated since the last reset
        (padding excluded) while recording was on (`record_routing_stats()`)."""
        stats = {}
        layers = self.sslora_layers()
        if not any(layer.record_stats or bool(layer.expert_counts.any()) for layer in layers.values()):
            warnings.warn(
                "no routing statistics recorded (off by default): call model.record_routing_stats() "
                "before the forward passes to count",
                stacklevel=2,
            )
        for name, layer in layers.items():
            counts = layer.expert_counts.detach().cpu()
            gates = layer.gate_sums.detach().cpu()
            stats[name] = {
                "counts": counts.tolist(),
                "fraction": (counts / counts.sum().clamp_min(1)).tolist(),
                "mean_gate": (gates / counts.clamp_min(1)).tolist(),
            }
            if reset:
                layer.reset_routing_stats()
        return stats

    def reset_routing_stats(self) -> None:
        for layer in self.sslora_layers().values():
            layer.reset_routing_stats()

    # ------------------------------------------------------------------ disable / merge / unload
    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the model computes exactly its base outputs."""
        layers = list(self.sslora_layers().values())
        previous = [layer.disabled for layer in layers]
        for layer in layers:
            layer.disabled = True
        try:
            yield
        finally:
            for layer, was in zip(layers, previous):
                layer.disabled = was

    def merge_residual(self) -> None:
        """Fold W_res into the base weights (one rank-r pass less per layer). unload() still restores W0."""
        for layer in self.sslora_layers().values():
            layer.merge_residual()

    def unload(self) -> nn.Module:
        """Remove every SSLoRA layer; returns the base model with its original weights."""
        for name, layer in self.sslora_layers().items():
            replace_module(self.base_model, name, layer.unwrap())
        return self.base_model


def get_sslora_model(
    model: nn.Module, config: SSLoRAConfig, *, cache_dir: str | os.PathLike | None = None, use_cache: bool = True
) -> SSLoRAModel:
    """Inject SSLoRA layers into `model` (in place) and freeze everything but the adapters.

    The spectral factors are read from / written to an on-disk cache (`cache_dir`, default
    $SSLORA_CACHE or ~/.cache/sslora), so a second initialisation of the same weights is a file read.
    `wrapped.init_cache` reports hits and misses.
    """
    cache = SpectralCache(cache_dir, enabled=use_cache)
    wrapped = SSLoRAModel._inject(model, config, cache=cache, initialise=True)
    wrapped.init_cache = cache
    return wrapped
