"""SSLoRALayer: a frozen linear map plus routed spectral LoRA experts and the residual compensation.

    y = W0 x - W_res x + s * sum_{i in topk(x)} R_i(x) B_i A_i x

Shapes: x (..., n) for nn.Linear, (B, n, H, W) for a 1x1 nn.Conv2d (a linear map over channels);
T = number of tokens (positions); experts stored concatenated, lora_A (r, n), lora_B (m, r), expert
j owning rows / columns [j*d, (j+1)*d).
"""

from __future__ import annotations

import torch
from torch import nn

from .router import TopKRouter, load_balancing_loss


class SpectralExperts(nn.Module):
    """N rank-d LoRA experts, concatenated so that all N run as one rank-r matmul pair."""

    def __init__(self, in_features: int, out_features: int, num_experts: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.num_experts, self.expert_rank = num_experts, rank // num_experts
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))


class LowRankResidual(nn.Module):
    """Frozen W_res = res_B @ res_A (m, n), kept factorised so the base weight is never modified."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.register_buffer("res_A", torch.zeros(rank, in_features, device=device, dtype=dtype))
        self.register_buffer("res_B", torch.zeros(out_features, rank, device=device, dtype=dtype))

    def weight(self) -> torch.Tensor:
        return self.res_B @ self.res_A


class RoutingContext:
    """State shared by all layers of one wrapped model: the padding mask of the current batch."""

    def __init__(self):
        self.attention_mask: torch.Tensor | None = None

    def valid_tokens(self, leading_shape: torch.Size) -> torch.Tensor | None:
        """(T,) bool for inputs whose leading dims are the mask's (B, L); None when they differ
        (vision-tower tokens, KV-cached decoding), in which case every token counts."""
        mask = self.attention_mask
        if mask is None or tuple(mask.shape) != tuple(leading_shape):
            return None
        return mask.reshape(-1).bool()


class SSLoRALayer(nn.Module):
    """Wraps a frozen `base` (nn.Linear or 1x1 nn.Conv2d) with routed experts.

    Args:
        base: the frozen module; its parameters are never modified (see merge_residual).
        router: picks top-k experts per token.
        experts: the N concatenated LoRA experts.
        residual: the frozen residual compensation, or None (zero init).
        scaling: s.
        dropout: dropout probability on the adapter input.
        context: shared routing context (padding mask); a private one if None.
    """

    def __init__(
        self,
        *,
        base: nn.Module,
        router: TopKRouter,
        experts: SpectralExperts,
        residual: LowRankResidual | None,
        scaling: float,
        dropout: float = 0.0,
        context: RoutingContext | None = None,
    ):
        super().__init__()
        self.base, self.router, self.experts, self.residual = base, router, experts, residual
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.context = context or RoutingContext()
        self.is_conv = isinstance(base, nn.Conv2d)
        self.disabled = False
        self.compute_aux_loss = True
        self.last_aux_loss: torch.Tensor | None = None
        self._original_weight: torch.Tensor | None = None
        n = experts.num_experts
        self.register_buffer("expert_counts", torch.zeros(n, device=experts.lora_A.device), persistent=False)
        self.register_buffer("gate_sums", torch.zeros(n, device=experts.lora_A.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.disabled:
            return out
        tokens = x.movedim(1, -1) if self.is_conv else x  # (..., n)
        flat = tokens.reshape(-1, tokens.shape[-1])  # (T, n)
        delta = self._adapter_delta(flat, self.context.valid_tokens(tokens.shape[:-1]))
        delta = delta.reshape(*tokens.shape[:-1], -1).to(out.dtype)
        return out + (delta.movedim(-1, 1) if self.is_conv else delta)

    def _adapter_delta(self, flat: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """flat (T, n) -> s * sum_{i in topk} R_i B_i A_i x - W_res x, (T, m); no loop over experts.

        One down-projection [A; res_A; W_z] (fp32 models) or [A; res_A] + an fp32 router reads x
        once; the top-k gates, expanded over each expert's d columns (zeros elsewhere), scale the
        expert columns; one up-projection [B, -res_B] writes the output. Cost: one rank-(2r + N) LoRA.
        """
        lora_a, lora_b, residual = self.experts.lora_A, self.experts.lora_B, self.residual
        r, d = lora_a.shape[0], self.experts.expert_rank
        flat = flat.to(lora_a.dtype)
        shared = isinstance(self.dropout, nn.Identity)  # with dropout only the experts see a dropped x
        route_fused = shared and lora_a.dtype == torch.float32  # the router must stay fp32
        down = [lora_a] + ([residual.res_A] if shared and residual is not None else [])
        hidden = self.dropout(flat) @ torch.cat(down + ([self.router.weight] if route_fused else [])).T
        if route_fused:
            gates, indices, logits = self.router.route(hidden[:, r * len(down) :])
            hidden = hidden[:, : r * len(down)]
        else:
            gates, indices, logits = self.router(flat)
        self._record_routing(gates, indices, logits, valid)
        gate_cols = (gates.to(lora_a.dtype) * self.scaling).repeat_interleave(d, dim=-1)  # (T, r), 0 off top-k
        if len(down) == 1:
            delta = (hidden * gate_cols) @ lora_b.T
        else:
            hidden = torch.cat([hidden[:, :r] * gate_cols, hidden[:, r:]], dim=-1)
            delta = hidden @ torch.cat([lora_b, -residual.res_B], dim=1).T
        if residual is not None and not shared:
            delta = delta - (flat @ residual.res_A.T) @ residual.res_B.T
        return delta

    def _record_routing(self, gates, indices, logits, valid: torch.Tensor | None) -> None:
        with torch.no_grad():  # tensors only: no host sync in the hot path
            chosen = (gates > 0).float()
            weighted = gates.detach()
            if valid is not None:
                chosen, weighted = chosen * valid[:, None], weighted * valid[:, None]
            self.expert_counts += chosen.sum(0)
            self.gate_sums += weighted.sum(0)
        self.last_aux_loss = None
        if self.training and self.compute_aux_loss:
            self.last_aux_loss = load_balancing_loss(logits, indices, self.router.num_experts, valid)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable tensors: experts, and the router unless N = 1 (a one-way softmax is always 1,
        so that router would get zero gradient: N = 1 is plain LoRA and counts as such)."""
        experts = [self.experts.lora_A, self.experts.lora_B]
        return experts + ([self.router.weight] if self.router.num_experts > 1 else [])

    def reset_routing_stats(self) -> None:
        self.expert_counts.zero_()
        self.gate_sums.zero_()

    def _base_weight_2d(self) -> torch.Tensor:
        return self.base.weight.view(self.base.weight.shape[0], -1)

    @torch.no_grad()
    def merge_residual(self) -> None:
        """Fold W_res into the base weight (W0 <- W0 - W_res) and drop the residual pass.

        Saves a copy of W0 so that unload() still restores it bit-exactly.
        """
        if self.residual is None:
            return
        self._original_weight = self.base.weight.detach().clone()
        weight = self._base_weight_2d()
        weight -= self.residual.weight().to(weight.dtype)
        self._merged_residual, self.residual = self.residual, None  # kept: save_pretrained still writes it

    def unwrap(self) -> nn.Module:
        """The base module with its original weight."""
        if self._original_weight is not None:
            with torch.no_grad():
                self.base.weight.copy_(self._original_weight)
            self._original_weight = None
        return self.base


def reference_forward(layer: SSLoRALayer, x: torch.Tensor) -> torch.Tensor:
    """Slow, obviously-correct forward: one loop over experts, Mixtral style. Tests hold the fast path to it."""
    out = layer.base(x)
    tokens = x.movedim(1, -1) if layer.is_conv else x
    flat = tokens.reshape(-1, tokens.shape[-1])
    a, b, d = layer.experts.lora_A, layer.experts.lora_B, layer.experts.expert_rank
    flat = flat.to(a.dtype)
    logits = flat.float() @ layer.router.weight.float().T
    top_logits, chosen = logits.topk(layer.router.top_k, dim=-1)
    weights = top_logits.softmax(dim=-1)
    delta = torch.zeros(flat.shape[0], b.shape[0], dtype=a.dtype, device=flat.device)
    for expert in range(layer.experts.num_experts):
        token_idx, slot = torch.where(chosen == expert)
        if token_idx.numel() == 0:
            continue
        a_j, b_j = a[expert * d : (expert + 1) * d], b[:, expert * d : (expert + 1) * d]
        gate = weights[token_idx, slot, None].to(a.dtype)
        update = (layer.dropout(flat[token_idx]) @ a_j.T) @ b_j.T
        delta = delta.index_add(0, token_idx, layer.scaling * gate * update)
    if layer.residual is not None:
        delta = delta - flat @ layer.residual.weight().T
    delta = delta.reshape(*tokens.shape[:-1], -1).to(out.dtype)
    return out + (delta.movedim(-1, 1) if layer.is_conv else delta)
