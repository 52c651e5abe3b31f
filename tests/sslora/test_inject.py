"""Adapter dtype in half-precision models: fp32 experts and residual by default (PEFT's
autocast_adapter_dtype), bf16 on request; the router fp32 also under autocast."""

import pytest
import torch
from torch import nn

from sslora import SSLoRAConfig, SSLoRAModel, get_sslora_model, reference_forward

from .helpers import make_layer
from .test_layer import _perturb


def _bf16_model(seed=0, **config_kwargs):
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64)).to(torch.bfloat16)
    config = SSLoRAConfig(target_modules=["0", "2"], r=16, num_experts=4, top_k=2, **config_kwargs)
    return get_sslora_model(base, config)


@pytest.mark.parametrize("autocast_adapter_dtype, expected", [(True, torch.float32), (False, torch.bfloat16)])
def test_adapter_dtype_in_a_bf16_model(autocast_adapter_dtype, expected):
    layer, _ = make_layer(96, 64, dtype=torch.bfloat16, r=8, num_experts=4, top_k=2,
                          autocast_adapter_dtype=autocast_adapter_dtype)
    assert layer.experts.lora_A.dtype == layer.experts.lora_B.dtype == layer.residual.res_A.dtype == expected
    assert layer.router.weight.dtype == torch.float32 and layer.base.weight.dtype == torch.bfloat16
    _perturb(layer)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    out = layer(x)
    assert out.dtype == torch.bfloat16  # the base's dtype in and out
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and layer.experts.lora_A.grad.dtype == expected
    with torch.no_grad():
        torch.testing.assert_close(out.float(), reference_forward(layer, x).float(), atol=3e-2, rtol=3e-2)


def _changed_after_one_adamw_step(model, lr=1e-5) -> tuple[int, int]:
    """(entries with a nonzero gradient, how many of them changed) after one AdamW step."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    model.train()
    x = torch.randn(4, 8, 64, dtype=torch.bfloat16)
    model(x).float().pow(2).mean().add(model.aux_loss()).backward()
    torch.optim.AdamW(params, lr=lr).step()
    touched = changed = 0
    for p, old in zip(params, before):
        nonzero = p.grad != 0
        touched += int(nonzero.sum())
        changed += int((p.detach() != old)[nonzero].sum())
    return touched, changed


def test_small_adamw_updates_survive_in_a_bf16_model():
    """Measured: with bf16 experts (the opt-out), 78% of the entries with a gradient did not move."""
    touched, changed = _changed_after_one_adamw_step(_bf16_model())
    assert touched > 0 and changed == touched
    touched, changed = _changed_after_one_adamw_step(_bf16_model(autocast_adapter_dtype=False))
    assert changed < 0.5 * touched  # the opt-out stores bf16, where such updates round away


def test_bf16_model_round_trip_keeps_fp32_adapter(tmp_path):
    model = _bf16_model()
    _changed_after_one_adamw_step(model, lr=1e-3)
    model.eval()
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64)).to(torch.bfloat16)
    reloaded = SSLoRAModel.from_pretrained(fresh, tmp_path)
    assert all(layer.experts.lora_A.dtype == torch.float32 for layer in reloaded.sslora_layers().values())
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)


def test_routing_under_autocast_is_the_fp32_routing():
    """Under torch.autocast the router logits stay fp32, so every token picks the experts it picks
    without autocast (bf16 logits changed 0.4% of the choices)."""
    torch.manual_seed(0)
    layer, _ = make_layer(64, 256, r=16, num_experts=8, top_k=2)
    with torch.no_grad():
        layer.router.weight.normal_(0, 0.02)
    layer.record_stats = True
    x = torch.randn(4096, 256)
    counts = []
    for autocast in (False, True):
        layer.reset_routing_stats()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            layer(x)
        counts.append((layer.expert_counts.clone(), layer.gate_sums.clone()))
    assert torch.equal(counts[0][0], counts[1][0]) and torch.equal(counts[0][1], counts[1][1])
