"""The dual-encoder interface (CLIP-style: an image tower, a text tower, two heads, a temperature).

Every dual encoder of this package is a :class:`DualEncoder`. Subclasses implement five small
pieces (preprocessing, tokenisation, the two towers' pooled features, the two heads); the base
class turns them into normalised embeddings, the contrastive loss of training (``forward``) and
the no-grad batch helpers the zero-shot evaluator uses (``embed_images`` / ``embed_texts``).

``forward`` takes keyword tensors (``pixel_values``, ``input_ids``, ``attention_mask``), so a model
wrapped by ``sslora.get_sslora_model`` keeps the text padding mask for the balance loss, and its
output has a mutable ``loss`` to which the wrapper adds the routers' balance loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

LOSSES = ("clip", "siglip")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps exp(t) at 100 (Radford et al. 2021, §2.5)


@dataclass
class DualOutput:
    """loss () | None; logits_per_image (B, B); image_embeds (B, D); text_embeds (B, D) (unit norm)."""

    loss: Tensor | None
    logits_per_image: Tensor
    image_embeds: Tensor
    text_embeds: Tensor


def clip_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor, labels: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, Fig. 3): mean of image->text and text->image CE.

    image_embeds, text_embeds: (B, D) unit-norm; logit_scale: () log temperature t (logits = e^t x.y).
    labels (B,) optional: pairs with the same label are all positives, each row's target spread evenly
    over them (UniCL, Yang et al. 2022, eq. 3), so class-derived captions repeated in a batch are not
    pushed apart as negatives. Without labels (or with distinct labels) this is exactly CLIP's loss.
    """
    logits = image_embeds @ text_embeds.T * logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()  # (B, B)
    if labels is None:
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    same = (labels[:, None] == labels[None, :]).to(logits.dtype)  # symmetric (B, B)
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def siglip_loss(
    image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor, logit_bias: Tensor, labels: Tensor | None = None
) -> Tensor:
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, eq. 1), averaged over the batch:
    -1/B sum_ij log sigmoid(z_ij (e^t x_i.y_j + b)), z_ij = +1 for positives (i = j, or equal labels), else -1.
    """
    logits = image_embeds @ text_embeds.T * logit_scale.exp() + logit_bias  # (B, B)
    if labels is None:
        positive = torch.eye(len(logits), device=logits.device, dtype=torch.bool)
    else:
        positive = labels[:, None] == labels[None, :]
    signs = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / len(logits)


class DualEncoder(nn.Module):
    """CLIP-style dual encoder. Subclasses set ``image_tower_name`` / ``text_tower_name`` (attribute
    paths of the two towers, what adapters target), ``head_names`` (parameter-name prefixes of the
    projection heads and temperature, trained during alignment) and ``loss_type``, and implement
    ``preprocess``, ``tokenize``, ``image_features``, ``text_features``, ``project_image``, ``project_text``.
    """

    image_tower_name: str = "image_tower"
    text_tower_name: str = "text_tower"
    head_names: tuple[str, ...] = ()
    loss_type: str = "clip"
    logit_scale: nn.Parameter
    logit_bias: nn.Parameter | None = None

    # ------------------------------------------------------------------ what subclasses provide
    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> (B, 3, S, S) float32 pixel values."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Texts -> {"input_ids": (B, L) long, "attention_mask": (B, L) long}."""
        raise NotImplementedError

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, F_img) pooled image-tower features (before the head)."""
        raise NotImplementedError

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L), (B, L) -> (B, F_txt) pooled text-tower features (before the head)."""
        raise NotImplementedError

    def project_image(self, features: Tensor) -> Tensor:
        """(B, F_img) -> (B, D) (not normalised)."""
        raise NotImplementedError

    def project_text(self, features: Tensor) -> Tensor:
        """(B, F_txt) -> (B, D) (not normalised)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @property
    def image_tower(self) -> nn.Module:
        return self.get_submodule(self.image_tower_name)

    @property
    def text_tower(self) -> nn.Module:
        return self.get_submodule(self.text_tower_name)

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter of the heads and temperature (what alignment trains)."""
        return {n: p for n, p in self.named_parameters() if n.startswith(self.head_names)}

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, D) unit-norm image embeddings."""
        return F.normalize(self.project_image(self.image_features(pixel_values)), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L), (B, L) -> (B, D) unit-norm text embeddings."""
        return F.normalize(self.project_text(self.text_features(input_ids, attention_mask)), dim=-1)

    def contrastive_loss(self, image_embeds: Tensor, text_embeds: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.loss_type == "siglip":
            return siglip_loss(image_embeds, text_embeds, self.logit_scale, self.logit_bias, labels)
        return clip_loss(image_embeds, text_embeds, self.logit_scale, labels)

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor | None = None,
        return_loss: bool = True,
    ) -> DualOutput:
        """B image-text pairs -> DualOutput (loss = the contrastive loss when return_loss)."""
        image_embeds = self.encode_images(pixel_values)
        text_embeds = self.encode_text(input_ids, attention_mask)
        loss = self.contrastive_loss(image_embeds, text_embeds, labels) if return_loss else None
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        return DualOutput(loss, image_embeds @ text_embeds.T * scale, image_embeds, text_embeds)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> Tensor:
        """PIL images -> (N, D) unit-norm embeddings, in eval mode, in batches."""
        return _batched(lambda chunk: self.encode_images(self.preprocess(chunk).to(self.device)), images, batch_size, self)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Texts -> (N, D) unit-norm embeddings, in eval mode, in batches."""

        def run(chunk):
            batch = {k: v.to(self.device) for k, v in self.tokenize(chunk).items()}
            return self.encode_text(batch["input_ids"], batch["attention_mask"])

        return _batched(run, list(texts), batch_size, self)


def _batched(fn, items: Sequence, batch_size: int, module: nn.Module) -> Tensor:
    was_training = module.training
    module.eval()
    try:
        return torch.cat([fn(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])
    finally:
        module.train(was_training)
