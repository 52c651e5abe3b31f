"""Loading an adapter is verified and all-or-nothing (sslora/_loading.py, SSLoRAModel.from_pretrained)."""

import json

import pytest
import torch
from safetensors.torch import load, save_file
from torch import nn

import sslora.model
from sslora import SSLoRAConfig, SSLoRAModel, get_sslora_model
from sslora._io import WeightsFileError
from sslora.layer import SSLoRALayer

from .helpers import TinyMLP
from .test_io import flip_bit

TARGETS = ["fc_in", "fc_mid", "fc_out"]
X = torch.randn(3, 5, 48, generator=torch.Generator().manual_seed(1))


def _read(path):
    """A file's tensors in memory (safetensors' load_file maps the file, which these tests rewrite)."""
    return load(path.read_bytes())


def _fresh_mlp():
    torch.manual_seed(0)
    return TinyMLP()


@pytest.fixture
def saved(tmp_path):
    """(directory, outputs) of a saved adapter whose experts moved away from their init."""
    model = get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4, top_k=2))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in model.sslora_layers().values():
            layer.experts.lora_B.add_(0.1 * torch.randn(layer.experts.lora_B.shape, generator=g))
            layer.router.weight.add_(torch.randn(layer.router.weight.shape, generator=g))
    model.eval()
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path)
    return tmp_path, expected


def _load(directory, base=None):
    model = SSLoRAModel.from_pretrained(base if base is not None else _fresh_mlp(), directory).eval()
    with torch.no_grad():
        return model(X)


def _edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    payload = json.loads(path.read_text())
    payload.update(changes)
    path.write_text(json.dumps(payload))


def _assert_untouched(base, before, modules, flags):
    assert not any(isinstance(m, SSLoRALayer) for m in base.modules())
    assert [base.fc_in, base.fc_mid, base.fc_out] == modules  # the very same objects
    assert [p.requires_grad for p in base.parameters()] == flags
    assert not base._forward_pre_hooks and not base._forward_hooks
    with torch.no_grad():
        assert torch.equal(base(X), before)


def test_round_trip_is_bit_identical(saved):
    directory, expected = saved
    assert torch.equal(_load(directory), expected)


@pytest.mark.parametrize("damage", ["empty", "truncated", "pickled", "bit_flip", "nan"])
def test_damaged_weights_are_refused_base_restored_and_retry_works(saved, damage):
    directory, expected = saved
    path = directory / "adapter_model.safetensors"
    good = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) - 100])
    elif damage == "pickled":
        torch.save(_read(path), str(path))
    elif damage == "bit_flip":
        flip_bit(path, "fc_mid.experts.lora_B", byte=7, bit=6)
    else:  # NaN written with a matching checksum: only the finiteness check can catch it
        from sslora._io import atomic_save_safetensors, read_safetensors

        tensors, metadata = read_safetensors(path)
        tensors["fc_out.router.weight"][0, 0] = float("nan")
        atomic_save_safetensors(tensors, path, metadata={k: v for k, v in metadata.items() if k != "sha256"})
    base = _fresh_mlp()
    base.fc_in.weight.requires_grad_(False)  # a caller's own requires_grad choices must survive
    flags, modules = [p.requires_grad for p in base.parameters()], [base.fc_in, base.fc_mid, base.fc_out]
    with torch.no_grad():
        before = base(X)
    with pytest.raises(WeightsFileError) as info:
        SSLoRAModel.from_pretrained(base, directory)
    assert str(path) in str(info.value)
    if damage in ("bit_flip", "nan"):
        assert info.value.tensor == {"bit_flip": "fc_mid.experts.lora_B", "nan": "fc_out.router.weight"}[damage]
    _assert_untouched(base, before, modules, flags)
    path.write_bytes(good)
    assert torch.equal(_load(directory, base), expected)  # a retry on the same base model works


def test_failure_midway_through_injection_restores_the_base(saved, monkeypatch):
    directory, expected = saved
    real, calls = sslora.model.build_layer, []

    def failing(name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(name, *args, **kwargs)

    base = _fresh_mlp()
    flags, modules = [p.requires_grad for p in base.parameters()], [base.fc_in, base.fc_mid, base.fc_out]
    with torch.no_grad():
        before = base(X)
    monkeypatch.setattr(sslora.model, "build_layer", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        SSLoRAModel.from_pretrained(base, directory)
    _assert_untouched(base, before, modules, flags)
    monkeypatch.setattr(sslora.model, "build_layer", real)
    assert torch.equal(_load(directory, base), expected)


def test_adapter_of_another_model_is_refused_and_the_base_restored(saved, tmp_path):
    directory, _ = saved
    other = tmp_path / "other"
    get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=["fc_in", "fc_mid"], r=8, num_experts=4)).save_pretrained(other)
    (directory / "adapter_model.safetensors").write_bytes((other / "adapter_model.safetensors").read_bytes())
    base = _fresh_mlp()
    flags, modules = [p.requires_grad for p in base.parameters()], [base.fc_in, base.fc_mid, base.fc_out]
    with torch.no_grad():
        before = base(X)
    with pytest.raises(ValueError, match="does not fit this model"):
        SSLoRAModel.from_pretrained(base, directory)
    _assert_untouched(base, before, modules, flags)


def test_load_adapter_weights_copies_nothing_unless_all_verified(saved):
    directory, _ = saved
    model = get_sslora_model(_fresh_mlp(), SSLoRAConfig(target_modules=TARGETS, r=8, num_experts=4, top_k=2))
    state = {k: v.clone() for k, v in model._adapter_tensors().items()}
    flip_bit(directory / "adapter_model.safetensors", "fc_out.experts.lora_A")  # the last tensor, after others
    with pytest.raises(WeightsFileError, match="sha256 mismatch"):
        model.load_adapter_weights(directory)
    assert all(torch.equal(v, state[k]) for k, v in model._adapter_tensors().items())


@pytest.mark.parametrize(
    "edit, field",
    [(dict(eta=0.4), "eta"), (dict(scaling_rank="expert"), "scaling_rank"), (dict(scaling=3.0), "scaling"), (dict(top_k=3), "top_k")],
)
def test_edited_config_is_refused_naming_the_field(saved, edit, field):
    directory, expected = saved
    _edit_config(directory, **edit)
    base = _fresh_mlp()
    with torch.no_grad():
        before = base(X)
    with pytest.raises(ValueError, match=field) as info:
        SSLoRAModel.from_pretrained(base, directory)
    assert "adapter_config.json" in str(info.value)
    with torch.no_grad():
        assert torch.equal(base(X), before)


def test_edits_that_do_not_change_outputs_still_load(saved):
    directory, expected = saved
    _edit_config(directory, aux_loss_coef=0.5, dropout=0.1, seed=7)
    assert torch.equal(_load(directory), expected)


def _make_legacy(directory):
    """Rewrite a saved adapter as before checksums and the config snapshot existed."""
    path = directory / "adapter_model.safetensors"
    save_file(_read(path), str(path), metadata={"format": "pt", "library": "sslora", "version": "0.1.0"})


def test_legacy_adapter_without_checksums_loads_identically(saved):
    directory, expected = saved
    _make_legacy(directory)
    assert torch.equal(_load(directory), expected)


def test_legacy_adapter_still_refuses_nan_and_scaling_edits(saved):
    directory, _ = saved
    _make_legacy(directory)
    path = directory / "adapter_model.safetensors"
    tensors = _read(path)
    good = dict(tensors)
    tensors["fc_in.experts.lora_A"] = tensors["fc_in.experts.lora_A"].clone()
    tensors["fc_in.experts.lora_A"][0, 0] = float("inf")
    save_file(tensors, str(path))
    with pytest.raises(WeightsFileError, match="NaN or infinite"):
        SSLoRAModel.from_pretrained(_fresh_mlp(), directory)
    save_file(good, str(path))
    _edit_config(directory, eta=0.4)
    with pytest.raises(ValueError, match="eta"):  # from the per-layer scaling saved in the config
        SSLoRAModel.from_pretrained(_fresh_mlp(), directory)


def test_invalid_config_value_names_the_file(saved):
    directory, _ = saved
    _edit_config(directory, top_k=99)
    with pytest.raises(ValueError, match="adapter_config.json.*top_k"):
        SSLoRAModel.from_pretrained(_fresh_mlp(), directory)


def test_unmodified_base_parameters_unchanged_after_success(saved):
    directory, _ = saved
    base = _fresh_mlp()
    weights = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = SSLoRAModel.from_pretrained(base, directory)
    unloaded = model.unload()
    assert all(isinstance(m, nn.Module) and not isinstance(m, SSLoRALayer) for m in unloaded.modules())
    assert all(torch.equal(p, weights[n]) for n, p in unloaded.named_parameters())
