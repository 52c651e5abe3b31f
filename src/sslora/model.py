"""SSLoRAModel: inject, freeze, save/load, disable, merge, unload, routing statistics."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from ._io import atomic_save_safetensors, read_safetensors
from ._loading import check_matches_saved, restore_on_error, weights_metadata
from ._signature import expose_forward_signature, state_without_forward
from .cache import SpectralCache
from .config import SSLoRAConfig
from .context import attach_scope_hooks, remove_scope_hooks
from .inject import build_layer, find_targets, replace_module
from .layer import RoutingContext, SSLoRALayer

WEIGHTS_NAME = "adapter_model.safetensors"
_ADAPTER_PREFIXES = ("router.", "experts.", "residual.", "spectral_indices")


class SSLoRAModel(nn.Module):
    """A model with SSLoRA layers injected. `forward` (with the wrapped model's signature),
    `generate` and attribute access pass through to it.

    Every call of the wrapped model (this `forward`, each step of `generate`, a direct call of
    `base_model`) is one forward: its `attention_mask` keeps padding out of the balance loss and the
    routing statistics, and `aux_loss()` is the balance loss of the layers that ran in the last one.
    In training mode, when the wrapped model returns a `loss` and `config.add_aux_loss_to_loss`,
    `aux_loss()` is added to it, so a Hugging Face `Trainer` trains the router balance too.

    Threads: the padding mask and the balance losses are per thread, and routing statistics are
    summed under a lock, so several threads may run one model at once (outputs, losses and counts
    as if run one after another). Switches of the whole model (`disable_adapter`, `merge_residual`,
    `record_routing_stats`, `train` / `eval`) apply to every thread: do not flip them while another
    thread runs it.
    """

    def __init__(self, model: nn.Module, config: SSLoRAConfig, context: RoutingContext):
        super().__init__()
        self.base_model = model
        self.sslora_config = config
        self._context = context
        attach_scope_hooks(model, context)
        expose_forward_signature(self)

    def __getstate__(self) -> dict:
        return state_without_forward(self)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        expose_forward_signature(self)

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
        if initialise and config.fold_residual:
            wrapped.merge_residual()
        return wrapped

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, directory: str | os.PathLike, *, is_trainable: bool = False
    ) -> "SSLoRAModel":
        """Load an adapter saved by save_pretrained onto a fresh base model. Never computes an SVD.

        All or nothing: if anything fails (a damaged file, an edited config, a model it does not
        fit), `model` is restored exactly as it was before the error is raised, so a retry works."""
        config, payload = SSLoRAConfig.load(directory)
        with restore_on_error(model):
            wrapped = cls._inject(model, config, cache=None, initialise=False)
            wrapped.load_adapter_weights(directory)
            if config.fold_residual:
                wrapped.merge_residual()
        wrapped.set_adapter_trainable(is_trainable)
        wrapped.loaded_version = payload.get("library_version", "")
        return wrapped

    def load_adapter_weights(self, directory: str | os.PathLike) -> None:
        """Copy the tensors of a saved adapter (same targets and shapes) into this one, in place.

        Nothing is copied unless everything checks out: the file (layout, each tensor's sha256,
        finite values; WeightsFileError names file and tensor) and the saved scaling and top_k
        against this adapter's (an edited adapter_config.json would silently change outputs)."""
        path = os.path.join(directory, WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory!s}")
        values, metadata = read_safetensors(path)
        expected = self._adapter_tensors()
        missing, unexpected = sorted(set(expected) - set(values)), sorted(set(values) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        for key, target in expected.items():
            if values[key].shape != target.shape:
                raise ValueError(f"{path}: {key} has shape {tuple(values[key].shape)}, expected {tuple(target.shape)}")
        check_matches_saved(self.sslora_layers(), self.sslora_config, metadata, path)
        with self.residual_unfolded(), torch.no_grad():  # new residual factors: fold them in afresh
            for key, target in expected.items():
                target.copy_(values[key])

    # ------------------------------------------------------------------ pass-through
    @contextlib.contextmanager
    def padding_mask(self, attention_mask: torch.Tensor | None) -> Iterator[None]:
        """Inside the block (this thread), layers whose input is (B, L, n) with (B, L) =
        attention_mask.shape leave padding (mask 0) out of the load-balancing loss and routing
        statistics, whatever mask the calls inside pass. Each call of the wrapped model uses its own
        `attention_mask` without this; use it to count other positions (e.g. only answer tokens)."""
        with self._context.padding_mask(attention_mask):
            yield

    def forward(self, *args, **kwargs):
        output = self.base_model(*args, **kwargs)
        config = self.sslora_config
        if self.training and config.add_aux_loss_to_loss and config.aux_loss_coef > 0:
            loss = getattr(output, "loss", None)
            if loss is not None:
                output.loss = loss + self.aux_loss().to(loss.device)
        return output

    def generate(self, *args, **kwargs):
        """The wrapped model's `generate`. Each decoding step is a call of the wrapped model: its
        attention_mask (grown by the generated tokens, cut to the step's new positions) keeps left
        padding out of the routing statistics."""
        return self.base_model.generate(*args, **kwargs)

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

    def save_pretrained(
        self, directory: str | os.PathLike, *, training: dict | None = None, results: dict | None = None
    ) -> None:
        """Write adapter_config.json + adapter_model.safetensors (atomically; no pickle) and a README.md
        model card (Hub front matter; ``training`` / ``results`` as in :func:`sslora.model_card.write_model_card`)."""
        from .model_card import write_model_card

        os.makedirs(directory, exist_ok=True)
        layers = {
            name: {"scaling": layer.scaling, "shape": list(layer.base.weight.shape[:2])}
            for name, layer in self.sslora_layers().items()
        }
        tensors = self._adapter_tensors()
        atomic_save_safetensors(tensors, os.path.join(directory, WEIGHTS_NAME), metadata=weights_metadata(self.sslora_config))
        self.sslora_config.save(directory, extra={"library_version": __version__, "layers": layers})
        adapter_params = self.adapter_parameter_count()
        write_model_card(directory, self.sslora_config.to_dict(), base_model=self.base_model,
                         trainable_params=(adapter_params, sum(p.numel() for p in self.parameters())),
                         training=training, results=results)

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

    def adapter_parameter_count(self) -> int:
        """Parameters of the adapter itself (experts; routers when N > 1), whatever else is trainable."""
        return sum(p.numel() for layer in self.sslora_layers().values() for p in layer.adapter_parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------------ losses & statistics
    def aux_loss(self) -> torch.Tensor:
        """aux_loss_coef * the load-balancing loss of the last forward of the wrapped model in this
        thread, averaged over the layer calls in it (a layer that did not run in it counts for
        nothing), on the device of the first (with a device_map the layers' losses are moved there).
        Zero after an eval-mode forward or with aux_loss_coef = 0. Also with gradient checkpointing:
        reentrant checkpointing runs the forward without autograd, where the loss trains the routers
        only (see `router.router_balance_loss`)."""
        losses = self._context.aux_losses()
        if not losses or self.sslora_config.aux_loss_coef == 0:
            return torch.zeros((), device=next(self.parameters()).device)
        device = losses[0].device
        return self.sslora_config.aux_loss_coef * torch.stack([loss.to(device) for loss in losses]).mean()

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
        """Inside the block the model computes exactly its base outputs (also after `merge_residual`)."""
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
        """Fold W_res into the base weights (one rank-r pass less per layer, in training and inference;
        the base weights change in place; `SSLoRAConfig.fold_residual` does it at build and load). `disable_adapter()` and `unload()` still give W0 bit for bit, from
        the few entries kept (`SSLoRALayer.merge_residual`), not from a copy of W0."""
        for layer in self.sslora_layers().values():
            layer.merge_residual()

    def unmerge_residual(self) -> None:
        """Undo `merge_residual`: W0 back in every base weight, bit for bit."""
        for layer in self.sslora_layers().values():
            layer.unmerge_residual()

    @contextlib.contextmanager
    def residual_unfolded(self) -> Iterator[None]:
        """Inside the block the base weights are W0 (to save or edit them); folded layers are folded
        again on the way out."""
        folded = [layer for layer in self.sslora_layers().values() if layer.residual_merged]
        for layer in folded:
            layer.unmerge_residual()
        try:
            yield
        finally:
            for layer in folded:
                layer.merge_residual()

    def merge_and_unload(self) -> nn.Module:
        """Fold every adapter into its base weight (one expert per layer only: plain LoRA) and remove
        the SSLoRA layers; returns the base model, which then computes what the adapted model did."""
        from .merge import merge_single_expert

        layers = self.sslora_layers()
        routed = sorted(name for name, layer in layers.items() if layer.experts.num_experts != 1)
        if routed:
            raise ValueError(f"merge_and_unload needs one expert per layer (plain LoRA); routed layers: {routed[:3]}")
        for name, layer in layers.items():
            merge_single_expert(layer)
            for attr in ("_merged_residual", "_merge_index", "_merge_values"):  # W0 is gone: nothing to restore
                if hasattr(layer, attr):
                    delattr(layer, attr)
            replace_module(self.base_model, name, layer.unwrap())
        remove_scope_hooks(self.base_model, self._context)
        return self.base_model

    def unload(self) -> nn.Module:
        """Remove every SSLoRA layer; returns the base model with its original weights."""
        for name, layer in self.sslora_layers().items():
            replace_module(self.base_model, name, layer.unwrap())
        remove_scope_hooks(self.base_model, self._context)
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
