"""Mixtral-style top-k router (fp32) and the Switch/Mixtral load-balancing loss."""

from __future__ import annotations

import torch
from torch import nn


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: only the CUDA flag without an argument
        return device_type == "cuda" and torch.is_autocast_enabled()


class TopKRouter(nn.Module):
    """z = W_z x in fp32; keep the top-k logits, softmax over them; all other experts get weight 0.

    Args:
        in_features: n, the input width.
        num_experts: N.
        top_k: k, experts kept per token.
    """

    def __init__(self, in_features: int, num_experts: int, top_k: int, device=None):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        # fp32 whatever the model dtype: routing decisions flip under bf16 rounding of close logits
        self.weight = nn.Parameter(torch.zeros(num_experts, in_features, device=device, dtype=torch.float32))

    def reset_parameters(self, std: float, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=generator) * std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (T, n) -> gates (T, N) fp32 dense (zeros off the top-k), indices (T, k), logits (T, N) fp32."""
        return self.route(self.logits(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, n) -> W_z x (T, N) in fp32 (or the router's dtype if wider, e.g. after model.double()),
        also under autocast (which would run the product in bf16 / fp16)."""
        if _autocast_on(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.logits(x)
        weight = self.weight
        if weight.dtype == torch.float32:
            return torch.nn.functional.linear(x if x.dtype == torch.float32 else x.float(), weight)
        dtype = torch.promote_types(weight.dtype, torch.float32)
        return x.to(dtype) @ weight.to(dtype).T

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """logits (T, N) fp32 -> (gates, indices, logits); split out so a caller may fuse W_z x into
        another matmul over the same x."""
        top_logits, indices = logits.topk(self.top_k, dim=-1)
        # scatter keeps the graph: only the selected logits (hence experts) receive router gradient
        gates = torch.zeros_like(logits).scatter(-1, indices, top_logits.softmax(dim=-1))
        return gates, indices, logits


def load_balancing_loss(
    logits: torch.Tensor, indices: torch.Tensor, num_experts: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch-Transformer / Mixtral balance loss N * sum_i f_i * P_i (Fedus et al. 2021, eq. 4).

    logits: (T, N) router logits; indices: (T, k) selected experts; valid: (T,) bool, False for
    padding tokens, which are excluded from both f (routed fraction of (token, slot) pairs) and P
    (mean full-softmax probability). Equals 1 under perfectly uniform routing.
    """
    probs = logits.float().softmax(dim=-1)
    routed = torch.zeros_like(probs).scatter(-1, indices, 1.0)  # (T, N) one per selected slot
    if valid is not None:
        weight = valid.to(probs.dtype)[:, None]
        count = weight.sum().clamp_min(1.0)
        probs, routed = probs * weight, routed * weight
    else:
        count = float(max(logits.shape[0], 1))  # a Python number: no tensor made per call
    fraction = routed.sum(0) / (count * indices.shape[-1])
    mean_prob = probs.sum(0) / count
    return num_experts * (fraction * mean_prob).sum()
