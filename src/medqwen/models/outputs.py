"""What the model classes' ``forward`` returns, and the language-model-head helpers they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100


@dataclass
class VLMOutput:
    """Result of ``forward``.

    loss: mean cross-entropy over labelled tokens (scalar) or None without labels.
    logits: (B, L, V), or None when labels were given and only labelled positions were projected.
    answer_logits: (T, V) logits at the T labelled positions (the ones that predict a label), when
        labels were given; ``answer_labels`` (T,) are their targets.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    answer_logits: Tensor | None = None
    answer_labels: Tensor | None = None
    past_key_values: Any = None


def labelled_lm_loss(hidden: Tensor, labels: Tensor, lm_head: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """Causal-LM loss with the LM head applied only where a label exists.

    hidden: (B, L, H) final hidden states; labels: (B, L) with -100 for ignored positions.
    Position t predicts labels[t + 1]. Returns (loss, logits (T, V), targets (T,)); the loss is the
    mean over the T labelled tokens (0 with a gradient path when T == 0).
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    h = hidden[:, :-1][keep]  # (T, H)
    logits = lm_head(h)
    tgt = targets[keep]
    if tgt.numel() == 0:
        return logits.sum() * 0.0, logits, tgt
    return F.cross_entropy(logits.float(), tgt), logits, tgt


def lm_output(hidden: Tensor, labels: Tensor | None, lm_head: nn.Module, full_logits: bool, logits_to_keep: int = 0) -> VLMOutput:
    """Final hidden states (B, L, H) -> VLMOutput: answer-only loss when labels are given (LM head
    applied at labelled positions only), full logits (B, L, V) without labels or with full_logits.
    ``logits_to_keep=n`` (without labels) projects only the last n positions: (B, n, V)."""
    result = VLMOutput()
    if labels is not None:
        result.loss, result.answer_logits, result.answer_labels = labelled_lm_loss(hidden, labels, lm_head)
    if full_logits or (labels is None and not logits_to_keep):
        result.logits = lm_head(hidden)
    elif labels is None:
        result.logits = lm_head(hidden[:, -logits_to_keep:])
    return result


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """(B, L) 0/1 mask -> (B, L) position ids counting real tokens only (pads get 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)
