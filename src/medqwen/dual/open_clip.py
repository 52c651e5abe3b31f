"""BiomedCLIP (and any open_clip model) as a :class:`DualEncoder` — an optional extra.

For users with a GPU machine and hub access (``pip install open_clip_torch``; open_clip needs
torchvision, which does not import with the CPU torch build here, so this module is not tested in CI)::

    from medqwen.dual.open_clip import biomedclip
    model = biomedclip()                                     # downloads the checkpoint once
    wrapped = apply_method(model, MethodSpec("sslora", r=32, num_experts=8, top_k=2))
    # towers: model.visual.trunk (timm ViT-B/16: blocks.*.attn.qkv / attn.proj / mlp.fc1 / mlp.fc2)
    #         model.text.transformer (PubMedBERT: query / key / value / dense)

Heads: ``model.visual.head`` (linear 768 -> 512), ``model.text.proj`` (MLP 768 -> 640 -> 512) and
``logit_scale``. Preprocessing uses open_clip's own transform (PIL -> tensor).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from .base import DualEncoder

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


class OpenCLIPDualEncoder(DualEncoder):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` model (``self.model``) behind the DualEncoder API."""

    image_tower_name = "model.visual.trunk"
    text_tower_name = "model.text.transformer"
    head_names = ("model.visual.head.", "model.text.proj.", "model.logit_scale")

    def __init__(self, model: nn.Module, preprocess: Any, tokenizer: Any, context_length: int = 256):
        super().__init__()
        self.model, self._preprocess, self.tokenizer, self.context_length = model, preprocess, tokenizer, context_length

    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]
        return self.model.logit_scale

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        return torch.stack([self._preprocess(im.convert("RGB")) for im in images])

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids = self.tokenizer(list(texts), context_length=self.context_length)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def image_features(self, pixel_values: Tensor) -> Tensor:
        return self.model.visual.trunk(pixel_values)  # timm trunk with pooling: (B, 768)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model.text.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return self.model.text.pooler(out, attention_mask)  # BiomedCLIP: CLS of the last hidden state

    def project_image(self, features: Tensor) -> Tensor:
        return self.model.visual.head(features)

    def project_text(self, features: Tensor) -> Tensor:
        return self.model.text.proj(features)


def biomedclip(name: str = BIOMEDCLIP, device: str = "cpu") -> OpenCLIPDualEncoder:
    """BiomedCLIP from the hub via open_clip (optional dependency)."""
    try:
        import open_clip
    except ImportError as err:  # also raised when torchvision is broken
        raise ImportError("BiomedCLIP needs open_clip: pip install open_clip_torch (and a working torchvision)") from err
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    return OpenCLIPDualEncoder(model, preprocess, open_clip.get_tokenizer(name))
