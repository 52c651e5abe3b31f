"""Tiny hand-built models for the SSLoRA tests."""

import torch
from torch import nn

from sslora import SSLoRAConfig
from sslora.inject import build_layer
from sslora.layer import RoutingContext


class TinyMLP(nn.Module):
    def __init__(self, width=48, hidden=64, out=40, conv=False):
        super().__init__()
        self.embed = nn.Embedding(20, width)
        self.fc_in = nn.Linear(width, hidden)
        self.fc_mid = nn.Linear(hidden, hidden, bias=False)
        self.fc_out = nn.Linear(hidden, out)
        self.pointwise = nn.Conv2d(4, 36, kernel_size=1) if conv else None

    def forward(self, x, attention_mask=None, labels=None):
        h = torch.relu(self.fc_in(x))
        y = self.fc_out(torch.relu(self.fc_mid(h)))
        return y


def make_layer(m=40, n=48, *, dtype=torch.float32, conv=False, **config_kwargs):
    base = nn.Conv2d(n, m, kernel_size=1) if conv else nn.Linear(n, m)
    base = base.to(dtype)
    for p in base.parameters():
        p.requires_grad_(False)
    config = SSLoRAConfig(target_modules=["base"], **config_kwargs)
    layer = build_layer("base", base, config, context=RoutingContext(), cache=None)
    return layer, config


def tiny_qwen2_5_vl():
    """The Hugging Face model inside medqwen's tiny random Qwen2.5-VL (the one builder of it), for
    SSLoRA tests that wrap a plain transformers model."""
    from medqwen.models import tiny_qwen2_5_vl as build

    return build(seed=0).hf


def qwen_image_inputs(model, batch=2, text_len=6):
    """input_ids with one 28x28 image (2x2 patches -> 1 merged token) per sample, plus pixel_values."""
    config = model.config
    ids = torch.randint(16, config.get_text_config().vocab_size, (batch, text_len))  # past the special tokens
    ids[:, 1] = config.vision_start_token_id
    ids[:, 2] = config.image_token_id
    ids[:, 3] = config.vision_end_token_id
    pixel_values = torch.randn(batch * 4, 3 * 2 * 14 * 14)
    grid = torch.tensor([[1, 2, 2]] * batch)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixel_values, "image_grid_thw": grid}
