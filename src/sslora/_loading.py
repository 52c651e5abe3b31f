"""Checks that make loading an adapter all-or-nothing and refuse one that would compute something
other than what was saved (weights verified in `_io.read_safetensors`, config checked here)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Iterator

import torch
from torch import nn

from . import __version__
from .config import CONFIG_NAME, ConfigError, SSLoRAConfig
from .inject import replace_module
from .layer import SSLoRALayer

# safetensors metadata key: the config fields that change a loaded adapter's outputs but not the
# shapes of its tensors. A copy beside the weights, because adapter_config.json is hand-editable.
CONFIG_KEY = "sslora.config"
_OUTPUT_FIELDS = ("top_k", "scaling", "eta", "scaling_rank", "r", "num_experts")
# nn.Module's hook tables (and the side tables torch keys alike)
_HOOK_TABLES = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def weights_metadata(config: SSLoRAConfig) -> dict[str, str]:
    """Metadata of adapter_model.safetensors (the checksums are added by atomic_save_safetensors)."""
    snapshot = {name: getattr(config, name) for name in _OUTPUT_FIELDS}
    return {"format": "pt", "library": "sslora", "version": __version__, CONFIG_KEY: json.dumps(snapshot, sort_keys=True)}


def check_matches_saved(
    layers: dict[str, SSLoRALayer], config: SSLoRAConfig, metadata: dict[str, str], weights_path: str
) -> None:
    """ConfigError unless the adapter in use routes and scales as the saved one did.

    Compares with the `layers` of the adapter_config.json beside `weights_path` (each layer's
    scaling at save time) and with `metadata`, the weights file's (the output-relevant config
    fields at save time; absent in files written before it existed, whose top_k goes unchecked)."""
    config_path = os.path.join(os.path.dirname(weights_path), CONFIG_NAME)
    payload = {}
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as handle:
            try:
                payload = json.load(handle)
            except ValueError as err:
                raise ConfigError(f"{config_path}: invalid JSON ({err})") from err
    try:
        saved = json.loads(metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else {}
    except ValueError as err:
        raise ValueError(f"{weights_path}: corrupt {CONFIG_KEY!r} metadata ({err})") from err
    changed = [name for name in _OUTPUT_FIELDS if name in saved and saved[name] != getattr(config, name)]

    def differences(names):
        return ", ".join(f"{name}: saved {saved[name]!r}, now {getattr(config, name)!r}" for name in names)

    if "top_k" in changed:
        raise ConfigError(
            f"{config_path}: top_k differs from the value {weights_path} was saved with ({differences(['top_k'])}); "
            "was adapter_config.json edited? Loading would silently change the routing; restore the saved value"
        )
    saved_layers = (payload.get("layers") if isinstance(payload, dict) else None) or {}
    wrong = []
    for name, layer in layers.items():
        entry = saved_layers.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("scaling"), (int, float)):
            if not math.isclose(layer.scaling, entry["scaling"], rel_tol=1e-9, abs_tol=0.0):
                wrong.append(f"{name} (saved {entry['scaling']:.6g}, now {layer.scaling:.6g})")
    if not wrong:
        return
    suspects = [name for name in changed if name != "top_k"]
    if suspects:
        why = f"these fields differ from the saved ones: {differences(suspects)}."
    elif config.scaling == "optimal":
        why = "scaling = sqrt(3 n eta / r_s): was eta, scaling_rank or r edited?"
    else:
        why = "was scaling edited?"
    raise ConfigError(
        f"{config_path}: the scaling computed from this config differs from the one saved for "
        f"{len(wrong)} layer(s), e.g. {wrong[0]}; {why} Loading would silently change the outputs"
    )


@contextlib.contextmanager
def restore_on_error(model: nn.Module) -> Iterator[None]:
    """On any error inside the block, take out the SSLoRA layers injected in it and restore the
    parameters' requires_grad, so that `model` computes exactly what it did before and a retry
    can inject again; then re-raise."""
    before = {id(m) for m in model.modules() if isinstance(m, SSLoRALayer)}
    flags = [(param, param.requires_grad) for param in model.parameters()]
    hooks = {name: set(getattr(model, name, {})) for name in _HOOK_TABLES}
    try:
        yield
    except BaseException:
        with torch.no_grad():
            added = [(n, m) for n, m in model.named_modules() if isinstance(m, SSLoRALayer) and id(m) not in before]
            for name, layer in added:
                replace_module(model, name, layer.unwrap())
        for param, flag in flags:
            param.requires_grad_(flag)
        # hooks the wrapper put on the root (unwrap may already have taken them off)
        for name, keys in hooks.items():
            table = getattr(model, name, {})
            for key in set(table) - keys:
                del table[key]
        raise
