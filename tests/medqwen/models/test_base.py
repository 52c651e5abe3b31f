"""Every model class through the declared VisionLanguageModel interface, the way callers use it."""

from __future__ import annotations

import pytest
import torch

from medqwen.models import IGNORE_INDEX, VisionLanguageModel, load_model, tiny_mini, tiny_qwen2_5_vl

# One toy-size builder per model class; the test below checks that none is missing.
BUILDERS = {"tiny-mini": tiny_mini, "tiny-qwen2.5-vl": tiny_qwen2_5_vl}


def _concrete_subclasses(cls) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= _concrete_subclasses(sub)
        if sub.__module__.startswith("medqwen.") and not getattr(sub, "__abstractmethods__", None):
            found.add(sub)
    return found


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_model_class_honours_the_interface(name, rgb_image, gray_image, tmp_path):
    covered = {type(build(seed=0)) for build in BUILDERS.values()}
    assert _concrete_subclasses(VisionLanguageModel) <= covered, "a model class without a builder in BUILDERS"
    model = BUILDERS[name](seed=0).eval()
    assert isinstance(model, VisionLanguageModel)
    assert isinstance(model.context_length, int) and model.context_length > 0
    prompts, answers, images = ["Is there a fracture?", "Text only"], ["yes", "no"], [rgb_image, None]

    # build_inputs + forward: labels on the answer (and end of turn) only; loss and logit shapes
    batch = model.build_inputs(images, prompts, answers)
    for row, answer in enumerate(answers):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert labelled[-1] == model.eot_token_id and model.tokenizer.decode(labelled[:-1]) == answer
    with torch.no_grad():
        out = model(**batch)
        full = model(**batch, full_logits=True)
        blank = model(**batch, blank_images=True)
        bare = {k: v for k, v in batch.items() if k != "labels"}
        last = model(**bare, logits_to_keep=1)
    assert out.logits is None and torch.isfinite(out.loss) and full.logits.shape[:2] == batch["input_ids"].shape
    assert last.logits.shape == (2, 1, full.logits.shape[-1])
    assert not torch.allclose(out.loss, blank.loss)

    # trainable groups: disjoint, named as the trainer expects; set_trainable switches them
    groups = model.trainable_groups()
    assert set(groups) == {"projector", "vision", "language"}
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids))
    model.set_trainable(["language"])
    assert all(p.requires_grad for p in groups["language"]) and not any(p.requires_grad for p in groups["projector"])
    model.set_trainable(["projector"])

    # generate: greedy answers from images, blank control, and (where declared) cached features
    answers_now = model.generate(images, prompts, max_new_tokens=3)
    assert len(answers_now) == 2 and all(isinstance(a, str) for a in answers_now)
    assert len(model.generate(images, prompts, max_new_tokens=3, blank_images=True)) == 2
    if model.supports_image_features:
        feats = model.encode_images([rgb_image])
        assert feats.dtype == torch.float32 and feats.shape[0] == 1
        assert model.generate(None, prompts, 3, image_features=[feats[0], None]) == answers_now
        cached = model.build_inputs(None, prompts, answers, image_features=[feats[0], None])
        with torch.no_grad():
            torch.testing.assert_close(model(**cached).loss, out.loss)
    else:
        with pytest.raises(NotImplementedError, match="supports_image_features"):
            model.encode_images([rgb_image])
        with pytest.raises(ValueError, match="image_features"):
            model.generate(None, prompts, 3, image_features=[torch.zeros(1, 4, 4), None])

    # save / load: a trained projector comes back, and the reloaded model answers the same
    with torch.no_grad():
        for p in groups["projector"]:
            p.add_(torch.randn_like(p) * 0.1)
        moved = model(**batch).loss
    model.save_pretrained(tmp_path / "saved")
    restored = load_model(str(tmp_path / "saved")).eval()
    assert type(restored) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(restored(**batch).loss, moved)
    assert restored.generate([gray_image], prompts[:1], 3) == model.generate([gray_image], prompts[:1], 3)
