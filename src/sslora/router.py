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
        # in place on the fresh zeros (one tensor fewer per call); the gradient still reaches the softmax
        gates = torch.zeros_like(logits).scatter_(-1, indices, top_logits.softmax(dim=-1))
        return gates, indices, logits


def load_balancing_loss(
    logits: torch.Tensor, indices: torch.Tensor, num_experts: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch-Transformer / Mixtral balance loss N * sum_i f_i * P_i (Fedus et al. 2021, eq. 4).

    logits: (T, N) router logits; indices: (T, k) selected experts; valid: (T,) bool, False for
    padding tokens, which are excluded from both f (routed fraction of (token, slot) pairs) and P
    (mean full-softmax probability). Equals 1 under perfectly uniform routing. Differentiable in the
    logits (f is a count, constant).
    """
    return _BalanceLoss.apply(logits, indices, valid, num_experts)


def _balance(logits, indices, num_experts, valid) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, c) with loss = sum_i c_i * sum_t w_t p_ti, c = N f / count (N,), p = softmax(logits)."""
    probs = logits.float().softmax(dim=-1) if logits.dtype in (torch.float16, torch.bfloat16) else logits.softmax(-1)
    routed = torch.zeros_like(probs).scatter(-1, indices, 1.0)  # (T, N) one per selected slot
    if valid is not None:
        weight = valid.to(probs.dtype)[:, None]
        count = weight.sum().clamp_min(1.0)
        probs, routed = probs * weight, routed * weight
    else:
        count = float(max(logits.shape[0], 1))  # a Python number: no tensor made per call
    coef = num_experts * routed.sum(0) / (count * indices.shape[-1] * count)
    return (coef * probs.sum(0)).sum(), coef


def _balance_grad(logits: torch.Tensor, coef: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """d loss / d logits, (T, N): w_t p_t (c - <p_t, c>) (the softmax Jacobian applied to c)."""
    probs = logits.float().softmax(dim=-1) if logits.dtype in (torch.float16, torch.bfloat16) else logits.softmax(-1)
    grad = probs * (coef - (probs * coef).sum(-1, keepdim=True))
    return grad * valid.to(grad.dtype)[:, None] if valid is not None else grad


class _BalanceLoss(torch.autograd.Function):
    """The balance loss with its gradient written out. The padding mask and the fractions are kept
    as attributes, not saved tensors: non-reentrant gradient checkpointing replaces saved tensors by
    a recomputation in backward, which runs outside the forward's padding mask (a different number
    of saved tensors was a CheckpointError; a different mask would be a wrong gradient)."""

    @staticmethod
    def forward(ctx, logits, indices, valid, num_experts):
        loss, coef = _balance(logits, indices, num_experts, valid)
        ctx.save_for_backward(logits)
        ctx.coef, ctx.valid = coef, valid
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, upstream):
        (logits,) = ctx.saved_tensors
        grad = _balance_grad(logits, ctx.coef, ctx.valid)
        return (upstream * grad).to(logits.dtype), None, None, None


class _WithWeightGradient(torch.autograd.Function):
    """A value whose gradient with respect to `weight` was computed beforehand: upstream * grad."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return None, upstream.to(grad.dtype) * grad, None


def router_balance_loss(
    x: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, indices: torch.Tensor, num_experts: int,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The balance loss of a forward run without autograd (reentrant gradient checkpointing runs the
    forward under no_grad and recomputes it during backward, too late for a loss added to the total),
    differentiable in the router weight only.

    x: (T, n) router input; weight: (N, n); logits: (T, N) = W_z x; indices: (T, k). The weight's
    gradient d loss / d W_z = (d loss / d logits)^T x, (N, n), is computed now and applied in backward,
    so the router gets exactly the gradient it gets without checkpointing; the loss's gradient into x
    (coef-sized, through the rest of the network) is what is left out.
    """
    logits = logits.detach()
    loss, coef = _balance(logits, indices, num_experts, valid)
    grad_weight = _balance_grad(logits, coef, valid).to(weight.dtype).T @ x.to(weight.dtype)
    with torch.enable_grad():  # a graph node although the forward runs without autograd
        return _WithWeightGradient.apply(loss, weight, grad_weight)
