"""Finding target modules in any PyTorch model and building SSLoRA layers around them."""

from __future__ import annotations

import hashlib
import re

import torch
from torch import nn

from .cache import SpectralCache
from .config import ConfigError, SSLoRAConfig
from .layer import LowRankResidual, RoutingContext, SpectralExperts, SSLoRALayer
from .router import TopKRouter
from .spectral import expert_factors, residual_factors, select_indices, zero_init_factors


def _matches(name: str, patterns: list[str] | str | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def unsupported_reason(module: nn.Module) -> str | None:
    """None if SSLoRA can wrap `module`, else why not."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d):
        if module.kernel_size != (1, 1) or module.groups != 1:
            return f"only 1x1 Conv2d with groups=1 is a linear map (got kernel {module.kernel_size}, groups {module.groups})"
        if module.stride != (1, 1) or module.padding not in ((0, 0), "valid") or module.dilation != (1, 1):
            return "only 1x1 Conv2d with stride 1, padding 0, dilation 1 is supported"
        return None
    return f"{type(module).__name__} is not supported (supported: nn.Linear, 1x1 nn.Conv2d)"


def find_targets(model: nn.Module, config: SSLoRAConfig) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every module to wrap; raises ValueError naming what is wrong."""
    if any(isinstance(module, SSLoRALayer) for module in model.modules()):
        raise ValueError(f"{type(model).__name__} already holds SSLoRA layers: unload() them first")
    names = [name for name, _ in model.named_modules() if name]
    modules = dict(model.named_modules())
    targets, unsupported = [], []
    for name in names:
        if not _matches(name, config.target_modules) or _matches(name, config.exclude_modules):
            continue
        reason = unsupported_reason(modules[name])
        if reason is None:
            targets.append((name, modules[name]))
        elif not isinstance(config.target_modules, str) or not list(modules[name].children()):
            unsupported.append(f"{name}: {reason}")  # a regex may sweep over containers; leaves must fit
    if unsupported:
        raise ConfigError("SSLoRAConfig.target_modules matches unsupported modules:\n  " + "\n  ".join(unsupported))
    if isinstance(config.target_modules, list):
        for entry in config.target_modules:
            if not any(_matches(name, [entry]) for name, _ in targets):
                excluded = any(_matches(n, [entry]) for n in names)
                why = "every match is excluded by exclude_modules" if excluded else "no module has this name"
                raise ConfigError(
                    f"SSLoRAConfig.target_modules entry {entry!r} matches nothing in {type(model).__name__} ({why}); "
                    f"e.g. available leaf names: {_leaf_examples(model)}"
                )
    if not targets:
        raise ConfigError(
            f"SSLoRAConfig.target_modules={config.target_modules!r} matches no nn.Linear / 1x1 nn.Conv2d "
            f"in {type(model).__name__}; e.g. available leaf names: {_leaf_examples(model)}"
        )
    for name, module in targets:
        _check_rank(name, module, config)
    return targets


def _leaf_examples(model: nn.Module, limit: int = 8) -> list[str]:
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and not list(m.children())})
    return leaves[:limit]


def _features(module: nn.Module) -> tuple[int, int]:
    """(out, in) = (m, n)."""
    if isinstance(module, nn.Conv2d):
        return module.out_channels, module.in_channels
    return module.out_features, module.in_features


def _check_rank(name: str, module: nn.Module, config: SSLoRAConfig) -> None:
    m, n = _features(module)
    p, d, big_n = min(m, n), config.expert_rank, config.num_experts
    if config.init == "spectral" and p // big_n < d:
        raise ConfigError(
            f"module {name!r} ({m}x{n}) is too small for the requested rank: segment length "
            f"t = min(m, n) // N = {p} // {big_n} = {p // big_n} < d = r / N = {d}; lower r or num_experts"
        )
    if config.init in ("principal", "minor", "random") and config.r > p:
        raise ConfigError(f"module {name!r} ({m}x{n}) is too small for the requested rank r = {config.r} > min(m, n) = {p}")


def layer_seed(seed: int, name: str) -> int:
    """A per-layer seed that does not depend on the order layers are visited in."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def adapter_dtype(base_dtype: torch.dtype, config: SSLoRAConfig) -> torch.dtype:
    """The dtype of a layer's experts and residual factors: fp32 for a half-precision base unless
    config.autocast_adapter_dtype is off, the base's otherwise."""
    if config.autocast_adapter_dtype and base_dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return base_dtype


def build_layer(
    name: str,
    base: nn.Module,
    config: SSLoRAConfig,
    *,
    context: RoutingContext,
    cache: SpectralCache | None,
    initialise: bool = True,
) -> SSLoRALayer:
    """Wrap `base`. With initialise=False (loading, or meta-device counting) no SVD is computed."""
    m, n = _features(base)
    weight = base.weight
    device, dtype = weight.device, adapter_dtype(weight.dtype, config)
    scaling = config.scaling_for(n)
    router = TopKRouter(n, config.num_experts, config.top_k, device=device)
    experts = SpectralExperts(n, m, config.num_experts, config.r, device=device, dtype=dtype)
    residual = None if config.init == "zero" else LowRankResidual(n, m, config.r, device=device, dtype=dtype)
    layer = SSLoRALayer(
        base=base, router=router, experts=experts, residual=residual, scaling=scaling,
        dropout=config.dropout, context=context,
    )
    if config.init != "zero":
        layer.register_buffer("spectral_indices", torch.zeros(config.num_experts, config.expert_rank, dtype=torch.long, device=device))
    if not initialise or weight.is_meta:
        return layer
    generator = torch.Generator().manual_seed(layer_seed(config.seed, name))
    router.reset_parameters(config.router_init_std, generator)
    if config.init == "zero":
        lora_a, lora_b = zero_init_factors(m, n, config.r, generator)
    else:
        indices = select_indices(min(m, n), config.r, config.num_experts, config.init, config.segment_slice, generator)
        u, s, v = cache.get(weight, indices) if cache is not None else SpectralCache(enabled=False).get(weight, indices)
        lora_a, lora_b = expert_factors(u, s, v, scaling, config.rho)
        res_a, res_b = residual_factors(lora_a, lora_b, scaling, config.num_experts)
        with torch.no_grad():
            layer.spectral_indices.copy_(indices)
            residual.res_A.copy_(res_a)
            residual.res_B.copy_(res_b)
    with torch.no_grad():
        experts.lora_A.copy_(lora_a)
        experts.lora_B.copy_(lora_b)
    return layer


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
