"""SSLoRALayer: a frozen linear map plus routed spectral LoRA experts and the residual compensation.

    y = W0 x - W_res x + s * sum_{i in topk(x)} R_i(x) B_i A_i x

Shapes: x (..., n) for nn.Linear, (B, n, H, W) for a 1x1 nn.Conv2d (a linear map over channels);
T = number of tokens (positions); experts stored concatenated, lora_A (r, n), lora_B (m, r), expert
j owning rows / columns [j*d, (j+1)*d).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .context import RoutingContext, in_backward
from .merge import checksum, fold, unfolded
from .router import TopKRouter, _autocast_on, load_balancing_loss, router_balance_loss

__all__ = ["LowRankResidual", "RoutingContext", "SpectralExperts", "SSLoRALayer", "reference_forward"]


def _plain_linear(base: nn.Module) -> bool:
    """Is `base` exactly nn.Linear with no forward (pre-)hooks, so that its output is the adapter's to
    update in place? (Quantised or custom subclasses and hooked modules get an out-of-place sum.)"""
    module = nn.modules.module
    return (
        type(base) is nn.Linear
        and not base._forward_hooks
        and not base._forward_pre_hooks
        and not getattr(module, "_global_forward_hooks", None)  # private in torch: skipped if moved
        and not getattr(module, "_global_forward_pre_hooks", None)
    )


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


class SSLoRALayer(nn.Module):
    """Wraps a frozen `base` (nn.Linear or 1x1 nn.Conv2d) with routed experts.

    Args:
        base: the frozen module; its parameters are never modified (unless merge_residual is called).
        router: picks top-k experts per token.
        experts: the N concatenated LoRA experts.
        residual: the frozen residual compensation, or None (zero init).
        scaling: s.
        dropout: dropout probability on the adapter input.
        context: shared routing context (padding mask, balance losses); a private one if None.

    One forward for training and inference (`forward`): only the balance loss (training mode with
    `compute_aux_loss`; appended to the context's current forward scope, see
    `RoutingContext.collect_aux_losses`) and the routing statistics (`record_stats`, off by
    default) depend on the mode. No weight is concatenated or copied per call, so there is nothing
    to cache or invalidate: eval outputs follow every change of the adapter tensors (optimizer
    steps, loading, `.data` writes) and do not depend on whether autograd is on. (A cache of the
    fused [A; res_A; W_z] and [s B, -res_B] was measured at 1 and 16 tokens, 576-1536 wide: no
    faster than this path once its Python is flat, and `_version` counters do not see fused AdamW
    steps or `.data` writes, so it could go stale.)
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
        self.context.register_layer()
        self._released = False
        self.is_conv = isinstance(base, nn.Conv2d)
        # fixed at construction; plain attributes (submodule attributes go through Module.__getattr__)
        self._num_experts, self._top_k, self._expert_rank = experts.num_experts, router.top_k, experts.expert_rank
        self.disabled = False
        self.compute_aux_loss = True
        # routing statistics cost a few ops per call: off unless asked for (SSLoRAModel.record_routing_stats)
        self.record_stats = False
        # calls with at most this many tokens and no adapter gradient gather the k chosen experts'
        # rows per token instead of computing all N (`_gather_delta`). 0 = never: measured slower
        # than the dense path at every decoding size (1-16 tokens, 576-18944 wide; benchmarks/decode_speed.py).
        self.gather_max_tokens = 0
        n = experts.num_experts
        self.register_buffer("expert_counts", torch.zeros(n, device=experts.lora_A.device), persistent=False)
        self.register_buffer("gate_sums", torch.zeros(n, device=experts.lora_A.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = W0 x - res_B (res_A x) + s [B_1..B_N] (g (x) A x), g = top-k gates spread over each
        expert's d columns (zeros elsewhere).

        Cost: the down-projections A x, res_A x (frozen: no weight gradient) and the fp32 router
        W_z x; the gates scale A x through a (T, N, d) view; two in-place `addmm_`s add the residual
        and s times the experts to the base output (a plain nn.Linear's; otherwise to a delta added
        once). No weight is concatenated, so nothing is copied per call or saved for backward beyond
        the (T, r) activations, and the frozen residual factors get no weight-gradient products.
        Runs 210 times per token in MedQwen-mini, so its Python is kept flat: dict reads instead of
        Module.__getattr__, no nested module calls, branches only for what is switched on.
        """
        modules = self._modules  # dict reads, not Module.__getattr__: this runs per layer per token
        base = modules["base"]
        if self.disabled:
            merged = modules.get("_merged_residual")
            return base(x) if merged is None else self._original_base_forward(x, merged)
        experts, residual = modules["experts"]._parameters, modules.get("residual")
        lora_a, lora_b = experts["lora_A"], experts["lora_B"]
        leading = x.shape[:1] + x.shape[2:] if self.is_conv else x.shape[:-1]
        # a plain nn.Linear with no hooks runs on the flattened tokens, so that its (T, m) output is a
        # fresh tensor the adapter may update in place (no view: autograd would copy it back); called
        # as F.linear, which is all its forward does (a module call costs more than a decoding matmul)
        plain = not self.is_conv and _plain_linear(base)
        if plain:
            flat = x.reshape(-1, x.shape[-1])  # (T, n)
            params = base._parameters
            out = F.linear(flat, params["weight"], params.get("bias"))  # (T, m)
        else:
            out = base(x)
            flat = (x.movedim(1, -1) if self.is_conv else x).reshape(-1, x.shape[1 if self.is_conv else -1])
        if flat.dtype != lora_a.dtype:
            flat = flat.to(lora_a.dtype)
        count, width = flat.shape[0], lora_b.shape[0]
        scaled = gathered = None
        if count <= self.gather_max_tokens and self._num_experts > 1 and not (
            torch.is_grad_enabled() and self._adapter_requires_grad()
        ):
            gathered = self._gather_delta(flat, leading)  # (T, m)
        else:
            scaled = self._gated_hidden(flat, lora_a, leading)  # (T, r), times s below
        if residual is not None:
            res_a, res_b = residual._buffers["res_A"], residual._buffers["res_B"]
        if plain and out.dtype == flat.dtype:  # the sums fused into the up-projections, in place
            if residual is not None:
                out.addmm_(F.linear(flat, res_a), res_b.T, alpha=-1)
            if scaled is not None:
                out.addmm_(scaled, lora_b.T, alpha=self.scaling)
            else:
                out.add_(gathered)
            return out.view(*leading, width)
        delta = F.linear(scaled * self.scaling, lora_b) if scaled is not None else gathered
        if residual is not None:  # out of place: under autocast, addmm casts its arguments, addmm_ does not
            delta = torch.addmm(delta, F.linear(flat, res_a), res_b.T, alpha=-1)
        delta = delta.to(out.dtype)
        if plain:
            return (out + delta).view(*leading, width)
        delta = delta.view(*leading, width)
        return out + (delta.movedim(-1, 1) if self.is_conv else delta)

    def _gated_hidden(self, flat: torch.Tensor, lora_a: torch.Tensor, leading_shape: torch.Size) -> torch.Tensor:
        """(T, r): R_i(x) * (A_i x) in expert i's d columns, 0 for experts off the top-k (s is
        applied by the up-projection)."""
        modules = self._modules
        dropout = modules["dropout"]
        hidden = F.linear(flat if type(dropout) is nn.Identity else dropout(flat), lora_a)  # (T, r)
        count, n_exp = hidden.shape[0], self._num_experts
        want_aux = self.training and self.compute_aux_loss
        if n_exp == 1 and not want_aux:
            # a one-way softmax is exactly 1: N = 1 is LoRA (+ residual), the router need not run
            if self.record_stats and not in_backward():
                self._accumulate_stats(torch.ones(count, 1, device=flat.device), self.context.valid_tokens(leading_shape))
            return hidden
        router = modules["router"]
        weight = router._parameters["weight"]
        if flat.dtype == weight.dtype == torch.float32 and not _autocast_on(flat.device.type):
            logits = F.linear(flat, weight)  # (T, N): what router.logits computes, without its checks
        else:
            logits = router.logits(flat)
        gates, indices, logits = router.route(logits)  # fp32 (T, N): zeros off the top-k
        if want_aux or self.record_stats:
            self._record_routing(gates, indices, logits, leading_shape, flat)
        if gates.dtype != hidden.dtype:
            gates = gates.to(hidden.dtype)
        if torch.is_grad_enabled():  # out of place: the product's backward needs hidden as it was
            return (hidden.view(count, n_exp, self._expert_rank) * gates.unsqueeze(-1)).view(count, hidden.shape[1])
        hidden.view(count, n_exp, self._expert_rank).mul_(gates.unsqueeze(-1))  # no graph: reuse the buffer
        return hidden

    def _gather_delta(self, flat: torch.Tensor, leading_shape: torch.Size) -> torch.Tensor:
        """(T, m): the experts' term from only the k chosen experts per token (batched gathers of
        their rows of A and columns of B, then bmm); for calls without adapter gradients."""
        count, k, d, n_exp = flat.shape[0], self._top_k, self._expert_rank, self._num_experts
        lora_a, lora_b = self.experts.lora_A, self.experts.lora_B
        logits = self.router.logits(flat)
        top, indices = logits.topk(k, dim=-1)
        weights = top.softmax(dim=-1)
        gates = torch.zeros_like(logits).scatter_(1, indices, weights) if self.record_stats else None
        self._record_routing(gates, indices, logits, leading_shape, flat)
        rows = lora_a.view(n_exp, d, -1)[indices].view(count, k * d, -1)  # (T, k d, n)
        hidden = torch.bmm(rows, flat.unsqueeze(-1)).view(count, k, d)
        scaled = hidden * (weights.to(hidden.dtype) * self.scaling).unsqueeze(-1)
        columns = lora_b.view(-1, n_exp, d)[:, indices].permute(1, 0, 2, 3)  # (T, m, k, d)
        return torch.bmm(columns.reshape(count, -1, k * d), scaled.view(count, k * d, 1)).view(count, -1)

    def _adapter_requires_grad(self) -> bool:
        return self.experts.lora_A.requires_grad or self.experts.lora_B.requires_grad or self.router.weight.requires_grad

    def _record_routing(self, gates, indices, logits, leading_shape: torch.Size, flat: torch.Tensor) -> None:
        """Balance loss (training mode, compute_aux_loss) and statistics (record_stats) only.

        The loss goes to the context's forward scope (none: dropped). It is computed whenever autograd
        is on, collected or not, because non-reentrant checkpointing recomputes a layer in backward
        and needs the same saved tensors as its forward. Under no_grad in a collecting scope (the
        forward of reentrant checkpointing) it still trains the router (`router_balance_loss`)."""
        want_aux = self.training and self.compute_aux_loss
        if not (want_aux or self.record_stats):
            return
        context = self.context
        valid = context.valid_tokens(leading_shape)
        if self.record_stats and not in_backward():  # a recomputation was already counted in forward
            self._accumulate_stats(gates, valid)
        if not want_aux:
            return
        collecting = context.collecting
        router = self._modules["router"]
        if torch.is_grad_enabled():
            loss = load_balancing_loss(logits, indices, self._num_experts, valid)
        elif not collecting:
            return
        elif router.weight.requires_grad and not torch.is_inference_mode_enabled():
            loss = router_balance_loss(flat, router.weight, logits, indices, self._num_experts, valid)
        else:
            loss = load_balancing_loss(logits, indices, self._num_experts, valid)
        if collecting:
            context.add_aux_loss(loss)

    @torch.no_grad()
    def _accumulate_stats(self, gates: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Tensors only: no host sync in the hot path. Under the context's lock: threads running the
        model at once would lose each other's read-modify-write."""
        chosen = (gates > 0).float()
        weighted = gates.detach().float()
        if valid is not None:
            chosen, weighted = chosen * valid[:, None], weighted * valid[:, None]
        chosen, weighted = chosen.sum(0), weighted.sum(0)
        with self.context.stats_lock:
            self.expert_counts += chosen
            self.gate_sums += weighted

    # ------------------------------------------------------------------ adapter state
    def adapter_parameters(self) -> list[nn.Parameter]:
        """The trainable tensors: experts, and the router unless N = 1 (a one-way softmax is always 1,
        so that router would get zero gradient: N = 1 is plain LoRA and counts as such)."""
        experts = [self.experts.lora_A, self.experts.lora_B]
        return experts + ([self.router.weight] if self.router.num_experts > 1 else [])

    def reset_routing_stats(self) -> None:
        self.expert_counts.zero_()
        self.gate_sums.zero_()

    def _original_base_forward(self, x: torch.Tensor, residual: LowRankResidual) -> torch.Tensor:
        """base(x) with the original W0 after `merge_residual`, rebuilt bit for bit per call (an (m, n)
        temporary, nothing kept): disabling the adapter still gives the base model exactly."""
        base = self.base
        weight = unfolded(base.weight, residual.weight(), self._merge_index, self._merge_values)
        if type(base) is nn.Linear:
            return F.linear(x, weight, base.bias)
        if type(base) is nn.Conv2d:
            return base._conv_forward(x, weight, base.bias)
        return torch.func.functional_call(base, {"weight": weight}, (x,))

    @torch.no_grad()
    def merge_residual(self) -> None:
        """Fold W_res into the base weight (W0 <- W0 - W_res) and drop the residual pass.

        W0 is not copied: only the entries that (W0 - W_res) + W_res does not round back to are
        kept, (index, value) (`merge.fold`), so that disabling the adapter and `unwrap` give W0 bit
        for bit on the device and dtype it was merged on. The base weight is modified in place
        (`SSLoRAConfig.fold_residual` does this when the adapter is built; `unmerge_residual` undoes it).
        """
        if self.residual is None:
            return
        index, values, original = fold(self.base.weight, self.residual.weight())
        self.register_buffer("_merge_index", index, persistent=False)
        self.register_buffer("_merge_values", values, persistent=False)
        self._merge_checksum = original
        self._merged_residual, self.residual = self.residual, None  # kept: save_pretrained still writes it

    @torch.no_grad()
    def unmerge_residual(self) -> None:
        """Undo `merge_residual`: W0 back in the base weight, bit for bit, and the residual pass back."""
        merged = self._modules.get("_merged_residual")
        if merged is None:
            return
        weight = self.base.weight
        weight.copy_(unfolded(weight, merged.weight(), self._merge_index, self._merge_values))
        if checksum(weight) != self._merge_checksum:
            warnings.warn(
                "SSLoRA: the restored base weight differs from the one merged (the base weight or the "
                "residual factors changed, or the model moved to another device or dtype since merge_residual)",
                stacklevel=3,
            )
        del self._merged_residual, self._merge_index, self._merge_values
        self.residual = merged

    @property
    def residual_merged(self) -> bool:
        return self._modules.get("_merged_residual") is not None

    def unwrap(self) -> nn.Module:
        """The base module with its original weight; the layer lets go of the shared context."""
        self.unmerge_residual()
        if not self._released:
            self._released = True
            self.context.release_layer()
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
