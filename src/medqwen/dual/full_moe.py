"""Full-rank upcycled MoE baseline: N trainable full copies of each targeted weight + a top-k router.

Sparse upcycling (Komatsuzaki et al. 2023): every expert starts as an exact copy of the frozen
layer (weight and bias), so the initial output equals the base layer's for any routing (the top-k
gates sum to 1). Router and balance loss follow SSLoRA's (docs/design.md §1): fp32 logits
``z = W_z x``, top-k, softmax over the kept logits; balance loss ``N sum_i f_i P_i`` (Fedus et al.
2022, eq. 4). Trainable per layer: ``N (m n + m) + N n`` — the baseline SSLoRA's parameter count is
compared with. Works on nn.Linear and 1x1 nn.Conv2d (each spatial position is a token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FullRankMoELayer(nn.Module):
    """Wraps a Linear / 1x1 Conv2d ``base`` (m x n) with N full-rank experts initialised as copies of it.

    Parameters: ``weight`` (N, m, n), ``bias`` (N, m) or None, ``router`` (N, n). The base module is
    kept (frozen) only so :func:`downcycle` can restore it.
    """

    def __init__(self, base: nn.Module, num_experts: int = 8, top_k: int = 2, router_init_std: float = 0.02,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        self.is_conv = isinstance(base, nn.Conv2d)
        weight = base.weight.detach()
        weight = weight.reshape(weight.shape[0], weight.shape[1])  # (m, n); 1x1 conv -> matrix
        self.num_experts, self.top_k = num_experts, top_k
        self.weight = nn.Parameter(weight.unsqueeze(0).repeat(num_experts, 1, 1).clone())
        bias = getattr(base, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().unsqueeze(0).repeat(num_experts, 1).clone())
        router = torch.empty(num_experts, weight.shape[1], device=weight.device, dtype=torch.float32)
        if not router.is_meta:
            router.normal_(0.0, router_init_std, generator=generator)
        self.router = nn.Parameter(router)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.last_aux_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """x (..., n) for Linear or (B, n, h, w) for conv -> same layout with m features."""
        tokens = x.movedim(1, -1) if self.is_conv else x
        flat = tokens.reshape(-1, tokens.shape[-1])  # (T, n)
        logits = flat.float() @ self.router.T  # (T, N), fp32
        top, indices = logits.topk(self.top_k, dim=-1)  # (T, k)
        gates = top.softmax(dim=-1).to(flat.dtype)  # (T, k)
        out = flat.new_zeros(flat.shape[0], self.weight.shape[1])
        for e in range(self.num_experts):
            rows, slot = (indices == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = flat[rows] @ self.weight[e].T
            if self.bias is not None:
                y = y + self.bias[e]
            out = out.index_add(0, rows, y * gates[rows, slot, None])
        if self.training:
            self.last_aux_loss = balance_loss(logits, indices, self.num_experts)
        out = out.reshape(*tokens.shape[:-1], -1)
        return out.movedim(-1, 1) if self.is_conv else out


def balance_loss(logits: Tensor, indices: Tensor, num_experts: int) -> Tensor:
    """Switch-Transformer load-balancing loss N sum_i f_i P_i (Fedus et al. 2022, eq. 4).

    logits (T, N) router logits; indices (T, k) chosen experts. f_i = share of the T k routed
    (token, slot) pairs sent to expert i; P_i = mean full-softmax probability of expert i. Equals 1
    under perfectly uniform routing.
    """
    counts = F.one_hot(indices, num_experts).sum(dim=(0, 1)).float()  # (N,)
    fractions = counts / counts.sum().clamp_min(1)
    probs = logits.float().softmax(dim=-1).mean(dim=0)  # (N,)
    return num_experts * (fractions * probs).sum()


def upcycle(model: nn.Module, targets: list[str], num_experts: int = 8, top_k: int = 2, seed: int = 0) -> list[str]:
    """Replace each named module (qualified name in ``model``) by a FullRankMoELayer, in place.

    Only the expert copies and routers are trainable afterwards; every other parameter is frozen
    (callers unfreeze heads themselves). Returns the replaced names.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for name in targets:
        base = model.get_submodule(name)
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"{name}: {type(base).__name__} cannot be upcycled (Linear or 1x1 Conv2d only)")
        layer = FullRankMoELayer(base, num_experts, top_k, generator=generator)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    return list(targets)


def moe_layers(model: nn.Module) -> list[FullRankMoELayer]:
    return [m for m in model.modules() if isinstance(m, FullRankMoELayer)]


def moe_aux_loss(model: nn.Module) -> Tensor | None:
    """Mean balance loss of the last training forward over the model's MoE layers (None if it has none)."""
    losses = [m.last_aux_loss for m in moe_layers(model) if m.last_aux_loss is not None]
    return torch.stack(losses).mean() if losses else None
