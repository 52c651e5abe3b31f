"""Small parts built entirely in code, for fast tests with no hub and no weights.

- :func:`build_tokenizer`: a byte-level BPE tokenizer trained in memory on a small corpus, with
  ChatML special tokens and a ChatML chat template (the format of SmolLM2 and Qwen).
- :class:`TinyConvEncoder`: a random two-conv image encoder with the ``extract_features``
  interface of EfficientNet-Lite0 (224x224 -> (C, 7, 7)).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

# A ChatML template in the style of SmolLM2-Instruct's: a default system turn when none is given.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n' + default_system + '<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "You are a helpful assistant. Answer the question about the image briefly.",
    "Is there a fracture? yes. Is the lung normal? no. Which side is abnormal? left right.",
    "What modality is this? CT MRI X-ray ultrasound. What organ is shown? chest brain abdomen heart.",
    "Is there pneumonia in this chest radiograph? The heart is enlarged. No acute findings.",
    "What plane is this image? axial coronal sagittal. Describe the image: a small mass in the liver.",
    "0 1 2 3 4 5 6 7 8 9 , . ? ! : ; ( ) - the a an of in on with without and or not",
]


def chat_template(default_system: str = "You are a helpful assistant.") -> str:
    """The ChatML template with ``default_system`` baked in as the default system turn."""
    return "{% set default_system = " + repr(default_system) + " %}" + CHATML_TEMPLATE


def build_tokenizer(
    special_tokens: Sequence[str],
    *,
    vocab_size: int = 512,
    default_system: str = "You are a helpful assistant.",
    corpus: Sequence[str] = (),
):
    """Train a byte-level BPE tokenizer in memory (milliseconds) and wrap it for transformers.

    ``special_tokens[0]`` is the pad/unk token; ``<|im_start|>`` and ``<|im_end|>`` must be among
    them (``<|im_end|>`` is the EOS / end-of-turn token). Returns a transformers fast tokenizer
    with a ChatML ``chat_template``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    for required in ("<|im_start|>", "<|im_end|>"):
        if required not in special_tokens:
            raise ValueError(f"special_tokens must contain {required}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*_CORPUS, *corpus] * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token=special_tokens[0],
        unk_token=special_tokens[0],
    )
    fast.chat_template = chat_template(default_system)
    return fast


class TinyConvEncoder(nn.Module):
    """Random image encoder with EfficientNet's ``extract_features`` interface.

    extract_features: (B, 3, S, S) -> (B, feature_dim, grid, grid), grid = 7 by default.
    """

    def __init__(self, feature_dim: int = 32, grid: int = 7) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.conv1 = nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.conv2 = nn.Conv2d(8, feature_dim, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.act = nn.ReLU6()

    def extract_features(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.pool(self.act(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - same as extract_features
        return self.extract_features(x)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Fork the global torch RNG, seed it, and restore it afterwards (deterministic tiny models)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
