"""The balance loss's written-out gradient, its router-only form for forwards without autograd, and where the
router's gradient comes from."""

import pytest
import torch

from sslora.router import load_balancing_loss, router_balance_loss

from .helpers import make_layer


def _reference(logits, indices, num_experts, valid=None):
    """The loss as plain autograd ops (what load_balancing_loss computed before it had a backward)."""
    probs = logits.softmax(dim=-1)
    routed = torch.zeros_like(probs).scatter(-1, indices, 1.0)
    weight = torch.ones(logits.shape[0], 1, dtype=probs.dtype) if valid is None else valid.to(probs.dtype)[:, None]
    count = weight.sum().clamp_min(1.0)
    fraction = (routed * weight).sum(0) / (count * indices.shape[-1])
    return num_experts * (fraction * (probs * weight).sum(0) / count).sum()


@pytest.mark.parametrize("masked", [False, True])
def test_balance_loss_value_and_gradient(masked):
    torch.manual_seed(0)
    logits = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    indices = logits.detach().topk(2).indices
    valid = torch.rand(12) > 0.3 if masked else None
    torch.testing.assert_close(load_balancing_loss(logits, indices, 6, valid), _reference(logits, indices, 6, valid))
    assert torch.autograd.gradcheck(lambda z: load_balancing_loss(z, indices, 6, valid), (logits,))
    (got,) = torch.autograd.grad(load_balancing_loss(logits, indices, 6, valid), logits)
    (want,) = torch.autograd.grad(_reference(logits, indices, 6, valid), logits)
    torch.testing.assert_close(got, want)


def test_router_balance_loss_gives_the_router_its_gradient_without_autograd():
    torch.manual_seed(0)
    x = torch.randn(20, 16)
    weight = torch.randn(4, 16, requires_grad=True)
    valid = torch.rand(20) > 0.25
    logits = x @ weight.T
    indices = logits.topk(2).indices
    expected = load_balancing_loss(logits, indices, 4, valid)
    (want,) = torch.autograd.grad(expected * 3.0, weight)
    with torch.no_grad():
        surrogate = router_balance_loss(x, weight, x @ weight.T, indices, 4, valid)
    assert surrogate.requires_grad
    torch.testing.assert_close(surrogate.detach(), expected.detach())
    (got,) = torch.autograd.grad(surrogate * 3.0, weight)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("top_k", [1, 2])
def test_with_one_expert_per_token_the_task_loss_gives_the_router_no_gradient(top_k):
    """Softmax over the kept logits (Mixtral, the paper): at k = 1 every gate is exactly 1, so the router
    learns from the balance loss alone. This is why the 1-of-8 ablation routes almost uniformly
    (benchmarks/continual/README.md); at k = 2 the task loss does reach the router."""
    torch.manual_seed(0)
    layer, _ = make_layer(40, 48, r=16, num_experts=8, top_k=top_k, scaling=2.0)
    layer.compute_aux_loss = False  # the task loss only
    layer.train()
    x = torch.randn(3, 5, 48)
    layer(x).square().sum().backward()
    grad = layer.router.weight.grad
    if top_k == 1:
        assert grad is None or torch.count_nonzero(grad) == 0
    else:
        assert grad is not None and grad.abs().max() > 1e-4
