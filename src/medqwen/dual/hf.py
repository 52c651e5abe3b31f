"""Hugging Face ``CLIPModel`` / ``SiglipModel`` as :class:`DualEncoder` s (plus tiny random ones for tests).

Towers: ``model.vision_model`` and ``model.text_model`` (SSLoRA targets their ``q/k/v/out_proj``,
``fc1``, ``fc2`` Linear layers). Heads: CLIP's ``visual_projection`` / ``text_projection`` and
``logit_scale``; SigLIP keeps its heads inside the towers (``vision_model.head`` attention-pooling
head, ``text_model.head``) and adds ``logit_bias``.

With hub access: ``HFDualEncoder.from_pretrained("openai/clip-vit-base-patch16")`` (the processor
gives the tokenizer and the normalisation constants). Without: build a config in code and pass a
tokenizer, e.g. :class:`ByteTokenizer` (what :func:`tiny_clip` / :func:`tiny_siglip` do).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .base import DualEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ByteTokenizer:
    """UTF-8 bytes as token ids (pad 0, bos 1, unk 2, eos 3, byte b -> b + 4): a tokenizer with no files.

    Call like a Hugging Face tokenizer: ``tok(texts, max_length=...)`` -> {"input_ids", "attention_mask"},
    both (B, L) long; ``pad_to_max_length`` pads every row to ``max_length`` (SigLIP pools the last
    position, so it is trained with fixed-length padding).
    """

    pad_token_id, bos_token_id, unk_token_id, eos_token_id = 0, 1, 2, 3
    vocab_size = 260

    def __init__(self, max_length: int = 32, pad_to_max_length: bool = False):
        self.max_length, self.pad_to_max_length = max_length, pad_to_max_length

    def __call__(self, texts: Sequence[str], max_length: int | None = None, **_: Any) -> dict[str, Tensor]:
        limit = max_length or self.max_length
        rows = [[self.bos_token_id] + [b + 4 for b in t.lower().encode("utf-8")][: limit - 2] + [self.eos_token_id] for t in texts]
        width = limit if self.pad_to_max_length else max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def resize_normalize(images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """PIL images -> (B, 3, size, size) float32: RGB, bicubic resize (no crop), (x/255 - mean) / std."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) for im in images]
    x = (np.stack(arrays) / 255.0 - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).contiguous()


class HFDualEncoder(DualEncoder):
    """A transformers ``CLIPModel`` or ``SiglipModel`` (held as ``self.model``) behind the DualEncoder API.

    Args:
        model: the CLIPModel / SiglipModel.
        tokenizer: callable ``tokenizer(texts, padding=..., truncation=True, max_length=..., return_tensors="pt")``.
        image_size: the vision config's image size (default: read from the model).
        mean, std: pixel normalisation (default: CLIP's constants; SigLIP uses 0.5 / 0.5).
        max_length: text truncation length.
    """

    image_tower_name = "model.vision_model"
    text_tower_name = "model.text_model"

    def __init__(self, model: nn.Module, tokenizer: Callable, *, image_size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, max_length: int = 64):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.kind = type(model).__name__
        if self.kind not in ("CLIPModel", "SiglipModel", "Siglip2Model"):
            raise ValueError(f"HFDualEncoder wraps CLIPModel or SiglipModel, got {self.kind}")
        siglip = self.kind != "CLIPModel"
        self.loss_type = "siglip" if siglip else "clip"
        self.head_names = (
            ("model.logit_scale", "model.logit_bias", "model.vision_model.head.", "model.text_model.head.")
            if siglip else ("model.logit_scale", "model.visual_projection.", "model.text_projection.")
        )
        self.image_size = image_size or int(model.config.vision_config.image_size)
        default = (0.5, 0.5, 0.5) if siglip else None
        self.mean = tuple(mean or default or CLIP_MEAN)
        self.std = tuple(std or default or CLIP_STD)
        self.max_length = max_length

    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]
        return self.model.logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:  # type: ignore[override]
        return getattr(self.model, "logit_bias", None)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> "HFDualEncoder":
        """A CLIP / SigLIP checkpoint with its processor (needs the files locally or hub access)."""
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(name_or_path)
        image_processor = processor.image_processor
        size = image_processor.size.get("shortest_edge") or image_processor.size.get("height")
        return cls(model, processor.tokenizer, image_size=size, mean=image_processor.image_mean,
                   std=image_processor.image_std, **kwargs)

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        return resize_normalize(images, self.image_size, self.mean, self.std)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        padding = "max_length" if self.loss_type == "siglip" else True
        out = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt")
        mask = out.get("attention_mask")
        return {"input_ids": out["input_ids"], "attention_mask": mask if mask is not None else torch.ones_like(out["input_ids"])}

    def image_features(self, pixel_values: Tensor) -> Tensor:
        return self.model.vision_model(pixel_values=pixel_values).pooler_output

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.loss_type == "siglip":  # SigLIP is trained without an attention mask (pads attended, last token pooled)
            return self.model.text_model(input_ids=input_ids).pooler_output
        return self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def project_image(self, features: Tensor) -> Tensor:
        return features if self.loss_type == "siglip" else self.model.visual_projection(features)

    def project_text(self, features: Tensor) -> Tensor:
        return features if self.loss_type == "siglip" else self.model.text_projection(features)


def _tiny_tower_kwargs(hidden: int, layers: int) -> dict[str, Any]:
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": 4}


def tiny_clip(seed: int = 0, *, hidden: int = 64, layers: int = 2, projection_dim: int = 32, image_size: int = 32) -> HFDualEncoder:
    """A random CLIPModel at toy size (builds in ms, deterministic in ``seed``) + a ByteTokenizer."""
    from transformers import CLIPConfig, CLIPModel

    tok = ByteTokenizer(max_length=32)
    text = {**_tiny_tower_kwargs(hidden, layers), "vocab_size": tok.vocab_size, "max_position_embeddings": 32,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    vision = {**_tiny_tower_kwargs(hidden, layers), "image_size": image_size, "patch_size": 8}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    return HFDualEncoder(model, tok, max_length=32)


def tiny_siglip(seed: int = 0, *, hidden: int = 64, layers: int = 2, image_size: int = 32) -> HFDualEncoder:
    """A random SiglipModel at toy size + a ByteTokenizer padding to 16 tokens."""
    from transformers import SiglipConfig, SiglipModel

    tok = ByteTokenizer(max_length=16, pad_to_max_length=True)
    text = {**_tiny_tower_kwargs(hidden, layers), "vocab_size": tok.vocab_size, "max_position_embeddings": 16,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    vision = {**_tiny_tower_kwargs(hidden, layers), "image_size": image_size, "patch_size": 8}
    config = SiglipConfig(text_config=text, vision_config=vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config).eval()
    return HFDualEncoder(model, tok, max_length=16)
