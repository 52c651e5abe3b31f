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
    """A tiny random Qwen2.5-VL built from a config in code (no hub)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
            "fullatt_block_indexes": [1], "in_chans": 3,
        },
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def qwen_image_inputs(batch=2, text_len=6):
    """input_ids with one 28x28 image (2x2 patches -> 1 merged token) per sample, plus pixel_values."""
    ids = torch.randint(3, 240, (batch, text_len))
    ids[:, 1] = 252
    ids[:, 2] = 250
    ids[:, 3] = 253
    pixel_values = torch.randn(batch * 4, 3 * 2 * 14 * 14)
    grid = torch.tensor([[1, 2, 2]] * batch)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixel_values, "image_grid_thw": grid}
