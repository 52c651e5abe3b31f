"""A tiny random Qwen2.5-VL built in code: inputs, loss, generation, saving, local loading."""

from __future__ import annotations

import json

import pytest
import torch

from medqwen.models import IGNORE_INDEX, QwenVL, load_model, tiny_qwen2_5_vl


@pytest.fixture
def model() -> QwenVL:
    return tiny_qwen2_5_vl(seed=0)


def test_build_inputs_224_image(model, rgb_image):
    batch = model.build_inputs([rgb_image, None], ["Is there a fracture?", "Hello"], ["yes", "no"])
    assert batch["pixel_values"].shape == (256, 1176)
    assert batch["image_grid_thw"].tolist() == [[1, 16, 16]]
    ids = batch["input_ids"]
    assert int((ids[0] == model.image_token_id).sum()) == 64 and int((ids[1] == model.image_token_id).sum()) == 0
    assert torch.equal(batch["mm_token_type_ids"], (ids == model.image_token_id).long())
    start = (ids[0] == model.vision_start_id).nonzero().item()
    assert ids[0, start + 65] == model.vision_end_id
    labels = batch["labels"]
    for row, answer in enumerate(["yes", "no"]):
        assert model.tokenizer.decode(labels[row][labels[row] != IGNORE_INDEX].tolist()) == answer + "<|im_end|>"


def test_forward_loss_backward_reaches_merger(model, rgb_image, gray_image):
    model.train()
    batch = model.build_inputs([rgb_image, gray_image, None], ["Fracture?", "Mass?", "Text"], ["yes", "no", "ok"])
    out = model(**batch)
    assert out.logits is None and torch.isfinite(out.loss)
    out.loss.backward()
    groups = model.trainable_groups()
    assert groups["projector"] and all(p.grad is not None for p in groups["projector"])
    assert all(p.grad is None for p in groups["vision"] + groups["language"])
    ids = {id(p) for ps in groups.values() for p in ps}
    assert len(ids) == sum(len(ps) for ps in groups.values()) == len(list(model.parameters()))


def test_labelled_head_loss_equals_hf_loss(model, rgb_image):
    batch = model.build_inputs([rgb_image, None], ["Fracture?", "Hello there"], ["yes", "no thanks"])
    with torch.no_grad():
        ours = model(**batch, full_logits=True)
        hf = model.hf(**batch)
    torch.testing.assert_close(ours.loss, hf.loss)
    torch.testing.assert_close(ours.logits, hf.logits)


def test_generate_matches_greedy_forward_and_blank_control(model, rgb_image):
    prompts = ["Is there a fracture?", "Hello there you"]
    for blank in (False, True):
        answers = model.generate([rgb_image, None], prompts, max_new_tokens=4, blank_images=blank)
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
        batch = model.build_inputs([rgb_image, None], prompts)
        ids, mask, mm = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]
        tokens = []
        with torch.no_grad():
            for _ in range(4):
                out = model(
                    input_ids=ids,
                    attention_mask=mask,
                    mm_token_type_ids=mm,
                    pixel_values=batch["pixel_values"],
                    image_grid_thw=batch["image_grid_thw"],
                    blank_images=blank,
                )
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(nxt)
                ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
                mm = torch.cat([mm, torch.zeros_like(nxt)], 1)
        assert model.decode(torch.cat(tokens, 1)) == answers


def test_blank_images_change_the_loss(model, rgb_image):
    batch = model.build_inputs([rgb_image], ["Is there a fracture?"], ["yes"])
    with torch.no_grad():
        assert not torch.allclose(model(**batch).loss, model(**batch, blank_images=True).loss)


def test_save_load_projector_round_trip(model, rgb_image, tmp_path):
    with torch.no_grad():
        for p in model.projector.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    restored = load_model(str(tmp_path))
    assert isinstance(restored, QwenVL) and restored.model_type == "tiny-qwen2.5-vl"
    batch = model.build_inputs([rgb_image], ["Is there a fracture?"], ["yes"])
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, restored(**batch).loss)


def test_load_from_local_checkpoint_directory(model, tmp_path):
    """The hub layout (config, safetensors, tokenizer, preprocessor, chat template) loads offline.

    Without torchvision ``AutoProcessor`` fails on Qwen's video processor; the loader falls back
    to an image-only processor built from the same files.
    """
    model.hf.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    model.processor.image_processor.save_pretrained(tmp_path)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": model.chat_template}))
    loaded = load_model(str(tmp_path))
    assert isinstance(loaded, QwenVL) and loaded.base_config["name"] == str(tmp_path.resolve())
    batch = model.build_inputs(None, ["Hello"], ["hi"])
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, loaded(**batch).loss)
    with pytest.raises(ValueError, match="no such folder"):
        load_model(str(tmp_path / "missing"))  # never reaches for the hub without allow_download
