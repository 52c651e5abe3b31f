"""SSLoRAConfig(fold_residual=True): W_res folded into the base weight at build and load. Training
computes what the unfolded adapter computes (to rounding); W0 stays recoverable bit for bit."""

import pytest
import torch
from torch import nn

from sslora import SSLoRAConfig, SSLoRAModel, get_sslora_model
from sslora.config import ConfigError


def _base() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(48, 64), nn.GELU(), nn.Linear(64, 40))


def _config(fold: bool) -> SSLoRAConfig:
    return SSLoRAConfig(target_modules=["0", "2"], r=8, num_experts=4, top_k=2, fold_residual=fold)


def _train_steps(model: SSLoRAModel, steps: int = 3) -> list[float]:
    torch.manual_seed(1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 6, 48)
        loss = model(x).pow(2).mean() + model.aux_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_fold_residual_trains_like_the_unfolded_adapter():
    plain = get_sslora_model(_base(), _config(False), use_cache=False)
    folded = get_sslora_model(_base(), _config(True), use_cache=False)
    layers = folded.sslora_layers().values()
    assert all(layer.residual is None and layer.residual_merged for layer in layers)
    assert not torch.equal(folded.base_model[0].base.weight, plain.base_model[0].base.weight)
    torch.testing.assert_close(_train_steps(folded), _train_steps(plain), atol=1e-5, rtol=1e-5)
    for (name, p), (name_f, p_f) in zip(plain.named_parameters(), folded.named_parameters()):
        if p.requires_grad:
            assert name == name_f
            torch.testing.assert_close(p_f, p, atol=1e-5, rtol=1e-4)


def test_fold_residual_keeps_w0_recoverable_and_saves_it_unfolded(tmp_path):
    base = _base()
    w0 = {k: v.clone() for k, v in base.state_dict().items()}
    x = torch.randn(3, 5, 48)
    expected_base = base(x)
    model = get_sslora_model(base, _config(True), use_cache=False)
    _train_steps(model)
    model.eval()
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(x), expected_base)
    with model.residual_unfolded():
        assert all(torch.equal(layer.base.weight, w0[f"{name}.weight"]) for name, layer in model.sslora_layers().items())
        assert all(layer.residual is not None for layer in model.sslora_layers().values())
    assert all(layer.residual_merged for layer in model.sslora_layers().values())
    with torch.no_grad():
        adapted = model(x)
    model.save_pretrained(tmp_path)
    loaded = SSLoRAModel.from_pretrained(_base(), tmp_path)
    assert all(layer.residual_merged for layer in loaded.sslora_layers().values())
    with torch.no_grad():
        assert torch.equal(loaded(x), adapted)  # same W0, same residual: the same folded weights
    unfolded_twin = SSLoRAModel.from_pretrained(_base(), tmp_path)
    unfolded_twin.unmerge_residual()
    with torch.no_grad():
        torch.testing.assert_close(unfolded_twin(x), adapted, atol=1e-5, rtol=1e-5)
    restored = model.unload()
    assert all(torch.equal(value, w0[key]) for key, value in restored.state_dict().items())


def test_loading_new_residual_factors_into_a_folded_model_refolds_them(tmp_path):
    """load_adapter_weights replaces the residual factors: the base must hold W0 - (new W_res)."""
    source = get_sslora_model(_base(), _config(False), use_cache=False)
    with torch.no_grad():
        for layer in source.sslora_layers().values():
            layer.residual.res_A.mul_(1.5)  # factors that differ from the target's own init
            layer.experts.lora_B.normal_(0, 0.1)
    source.save_pretrained(tmp_path)
    base = _base()
    w0 = {k: v.clone() for k, v in base.state_dict().items()}
    target = get_sslora_model(base, _config(True), use_cache=False)
    target.load_adapter_weights(tmp_path)
    x = torch.randn(2, 4, 48)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), atol=1e-5, rtol=1e-5)
    restored = target.unload()
    assert all(torch.equal(value, w0[key]) for key, value in restored.state_dict().items())


def test_fold_residual_must_be_a_bool():
    with pytest.raises(ConfigError, match="fold_residual"):
        SSLoRAConfig(target_modules=["0"], r=8, num_experts=4, fold_residual="yes")
