"""Per-forward, per-thread routing state: balance losses collected per forward (layers that did not
run, gradient checkpointing, devices), padding masks per thread and per generate step."""

import copy
import threading

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sslora import SSLoRAConfig, get_sslora_model

from .helpers import TinyMLP


class Branchy(nn.Module):
    """`skip` leaves the second block out, as a text-only batch leaves out a VLM's vision blocks;
    `checkpointing` runs each block under torch.utils.checkpoint."""

    def __init__(self, width=32):
        super().__init__()
        self.first = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.second = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.checkpointing: str | None = None  # None, "reentrant", "non-reentrant"

    def _run(self, block, h):
        if self.checkpointing is None:
            return block(h)
        return checkpoint(block, h, use_reentrant=self.checkpointing == "reentrant")

    def forward(self, x, attention_mask=None, skip=False):
        h = self._run(self.first, x)
        return h if skip else self._run(self.second, h)


def _branchy(coef=0.5, seed=0):
    torch.manual_seed(seed)
    config = SSLoRAConfig(target_modules=["0", "2"], r=8, num_experts=4, top_k=2, aux_loss_coef=coef)
    model = get_sslora_model(Branchy(), config)
    return model.train()


def _routers(model):
    return [layer.router.weight for layer in model.sslora_layers().values()]


def test_layers_that_did_not_run_contribute_nothing():
    model = _branchy()
    x = torch.randn(2, 5, 32)
    model(x).pow(2).mean().add(model.aux_loss()).backward()
    assert len(model._context.aux_losses()) == 4
    model(x, skip=True)  # the second block does not run: before, its loss of the last step (graph freed) came along
    assert len(model._context.aux_losses()) == 2
    aux = model.aux_loss()
    aux.backward()  # was: "Trying to backward through the graph a second time"
    with model._context.collect_aux_losses() as losses:
        model.base_model.first(x)
    torch.testing.assert_close(aux, 0.5 * torch.stack(losses).mean())
    with torch.no_grad():
        model.eval()(x)
    assert model.aux_loss().item() == 0  # eval forwards have no balance loss, not the last training one


def _aux_router_grads(model, x):
    """Router gradients of aux_loss() alone, after one forward; checks the task loss still trains."""
    inputs = {}
    for name, layer in model.sslora_layers().items():
        layer.register_forward_pre_hook(lambda module, args, name=name: inputs.__setitem__(name, args[0].detach()))
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    mask[0, :2] = 0  # left padding: non-reentrant recomputation used to save fewer tensors (CheckpointError)
    out = model(x, attention_mask=mask)
    aux = model.aux_loss()
    aux.backward(retain_graph=True)
    grads = [w.grad.clone() for w in _routers(model)]
    assert all(g.abs().sum() > 0 for g in grads)  # reentrant: was 0
    out.pow(2).mean().backward()  # the task loss still trains through the recomputation
    assert all(layer.experts.lora_B.grad.abs().sum() > 0 for layer in model.sslora_layers().values())
    assert len(model._context.aux_losses()) == 4  # recomputations in backward add nothing
    return aux.detach(), grads, inputs


def test_gradient_checkpointing_keeps_the_balance_loss_and_its_router_gradient():
    from sslora.router import load_balancing_loss

    x = torch.randn(2, 6, 32, requires_grad=True)
    results = {}
    for checkpointing in (None, "non-reentrant", "reentrant"):
        model = _branchy()
        model.base_model.checkpointing = checkpointing
        results[checkpointing] = _aux_router_grads(model, x)
    aux_plain, plain, inputs = results[None]
    for mode in ("non-reentrant", "reentrant"):
        torch.testing.assert_close(results[mode][0], aux_plain)
    for got, want in zip(results["non-reentrant"][1], plain):  # everything recomputed: the same gradient
        torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-5)
    # reentrant: the forward ran without autograd; the loss trains each router through its own logits,
    # not through the layer inputs (which the last layer's loss has no path through anyway)
    routers = _routers(model)
    direct = []
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, :2] = False
    for (name, layer), weight in zip(model.sslora_layers().items(), routers):
        logits = inputs[name].reshape(-1, 32) @ weight.T
        direct.append(load_balancing_loss(logits, logits.topk(2).indices, 4, valid.reshape(-1)))
    want = torch.autograd.grad(0.5 * torch.stack(direct).mean(), routers)
    for got, expected in zip(results["reentrant"][1], want):
        torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(results["reentrant"][1][-1], plain[-1], atol=1e-7, rtol=1e-5)


def test_checkpointing_does_not_count_routing_twice():
    counts = {}
    for checkpointing in (None, "reentrant", "non-reentrant"):
        model = _branchy()
        model.base_model.checkpointing = checkpointing
        model.record_routing_stats()
        model(torch.randn(2, 6, 32, requires_grad=True)).sum().backward()
        counts[checkpointing] = [s["counts"] for s in model.routing_stats().values()]
    assert counts["reentrant"] == counts[None] == counts["non-reentrant"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device beside the CPU")
def test_aux_loss_from_layers_on_two_devices():
    model = _branchy()
    model.base_model.second.to("cuda")

    class Hop(nn.Module):  # what a device_map's hooks do between blocks
        def __init__(self, block, device):
            super().__init__()
            self.block, self.device = block, device

        def forward(self, h):
            return self.block(h.to(self.device))

    model.base_model.second = Hop(model.base_model.second, "cuda")
    out = model(torch.randn(2, 5, 32))
    aux = model.aux_loss()
    assert aux.device.type == "cpu" and len(model._context.aux_losses()) == 4
    (out.float().pow(2).mean().cpu() + aux).backward()


def test_two_threads_through_one_model():
    """Each thread its own padding mask and balance losses; statistics summed under a lock. A barrier
    inside the forward makes both threads be in the model at once."""
    torch.manual_seed(0)
    model = get_sslora_model(TinyMLP(), SSLoRAConfig(target_modules=["fc_in", "fc_mid", "fc_out"], r=8, num_experts=4))
    model.record_routing_stats()
    inputs = {
        "a": (torch.randn(2, 6, 48), torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])),
        "b": (torch.randn(3, 5, 48), torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])),
    }
    expected_out, expected_aux, expected_counts = {}, {}, None
    for key, (x, mask) in inputs.items():
        out = model(x, attention_mask=mask)
        expected_out[key], expected_aux[key] = out.detach(), model.aux_loss().detach()
    expected_counts = [s["counts"] for s in model.routing_stats(reset=True).values()]
    barrier = threading.Barrier(2, timeout=30)
    model.base_model.fc_mid.register_forward_pre_hook(lambda module, args: [barrier.wait()] and None)
    results, errors = {}, []

    def run(key):
        try:
            x, mask = inputs[key]
            out = model(x, attention_mask=mask)
            results[key] = (out.detach(), model.aux_loss().detach(), model._context.attention_mask)
        except Exception as error:  # reported below, in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(key,)) for key in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for key in inputs:
        out, aux, mask_after = results[key]
        assert torch.equal(out, expected_out[key]) and torch.equal(aux, expected_aux[key])
        assert mask_after is None  # no stale mask left behind
    assert [s["counts"] for s in model.routing_stats().values()] == expected_counts
    assert model._context.attention_mask is None


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_generate_counts_only_valid_tokens():
    """Left padding: 7 valid prompt tokens of 10; every decoding step adds one valid token per row."""
    model = get_sslora_model(_tiny_llama(), SSLoRAConfig(target_modules="llama", r=8, num_experts=4, top_k=2))
    ids = torch.randint(3, 64, (2, 5))
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    ids[mask == 0] = 0
    calls = []
    model.base_model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    model.record_routing_stats()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4,
                             do_sample=False, pad_token_id=0)
    assert out.shape == (2, 9) and len(calls) == 4  # prefill + 3 cached steps
    valid = int(mask.sum()) + 2 * (len(calls) - 1)  # 7 + 6 = 13 (was 16: the padding counted)
    for name, stats in model.routing_stats().items():
        assert sum(stats["counts"]) == valid * 2, name  # top-2
    assert model._context.attention_mask is None


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_hf_gradient_checkpointing_with_padding(use_reentrant):
    """A Hugging Face model's own gradient checkpointing, left-padded batch: the same balance loss;
    non-reentrant gives every adapter gradient of the run without checkpointing."""
    ids = torch.randint(3, 64, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    runs = []
    for checkpointing in (False, True):
        model = get_sslora_model(_tiny_llama(), SSLoRAConfig(target_modules="llama", r=8, num_experts=4, aux_loss_coef=0.5))
        if checkpointing:
            base = model.base_model
            enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
            enable({"use_reentrant": use_reentrant})
            model.base_model.enable_input_require_grads()  # reentrant: frozen embeddings give no grad otherwise
        model.train()
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
        aux = model.aux_loss().detach()
        out.loss.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        runs.append((out.loss.detach(), aux, [p.grad for p in params]))
    (loss, aux, grads), (loss_ckpt, aux_ckpt, grads_ckpt) = runs
    assert aux > 0 and len(grads) == len(grads_ckpt)
    torch.testing.assert_close(aux_ckpt, aux)
    torch.testing.assert_close(loss_ckpt, loss)
    if not use_reentrant:
        for got, want in zip(grads_ckpt, grads):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def _scope_hooks(module):
    from sslora.context import ForwardScopeHooks

    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    return [h for h in hooks if isinstance(getattr(h, "__self__", None), ForwardScopeHooks)]


def test_scope_hooks_come_off_with_the_layers(tmp_path):
    from sslora import SSLoRAModel

    config = SSLoRAConfig(target_modules=["fc_in", "fc_out"], r=8, num_experts=4)
    torch.manual_seed(0)
    base = TinyMLP()
    model = get_sslora_model(base, config)
    assert len(_scope_hooks(base)) == 2
    copied = copy.deepcopy(model)
    copied.train()(torch.randn(2, 3, 48))
    assert len(copied._context.aux_losses()) == 2 and model._context.aux_losses() == []  # its own context
    copied.unload()
    assert _scope_hooks(copied.base_model) == [] and len(_scope_hooks(base)) == 2
    model.save_pretrained(tmp_path)
    assert _scope_hooks(model.unload()) == []
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Exception):
        SSLoRAModel.from_pretrained(base, tmp_path)
    assert _scope_hooks(base) == []  # a failed load leaves the caller's model as it was
