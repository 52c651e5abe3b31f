"""Zero-shot metrics against hand-computed values, prompt ensembling, the evaluator, and the task builders."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from medqwen.data.schema import Sample, load_image
from medqwen.eval import evaluate_zero_shot
from medqwen.eval.zero_shot import (accuracy, balanced_accuracy, binary_auc, class_embeddings, classification_scores,
                                    roc_auc, softmax, zero_shot_scores)
from medqwen.eval.zero_shot_tasks import ZeroShotTask, build_task, vqa_rad_images

from ...conftest import SHARED_DATA


def test_accuracy_and_balanced_accuracy_by_hand():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    # recall of class 0 = 2/3, of class 1 = 1/1 -> (2/3 + 1) / 2
    assert balanced_accuracy([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # a predicted class absent from y_true does not enter the mean
    assert balanced_accuracy([0, 0], [0, 2]) == 0.5
    assert math.isnan(accuracy([], []))


def test_binary_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 (pos, neg) pairs ordered correctly
    assert binary_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == 0.75
    # a tie counts one half: pos 0.5 vs neg 0.5 (1/2) and vs neg 0.1 (1) -> 1.5 / 2
    assert binary_auc([1, 0, 0], [0.5, 0.5, 0.1]) == 0.75
    assert binary_auc([1, 0], [0.2, 0.1]) == 1.0 and binary_auc([1, 0], [0.1, 0.2]) == 0.0
    assert math.isnan(binary_auc([1, 1], [0.1, 0.2]))


def test_multiclass_auc_is_macro_one_vs_rest_by_hand():
    y = [0, 1, 2, 0]
    p = np.array([[0.6, 0.3, 0.1],
                  [0.2, 0.5, 0.3],
                  [0.5, 0.1, 0.4],
                  [0.3, 0.4, 0.3]])
    # class 0: pos {0.6, 0.3} vs neg {0.2, 0.5}: 0.6 beats both, 0.3 beats 0.2 -> 3/4
    # class 1: pos {0.5} vs neg {0.3, 0.1, 0.4} -> 1
    # class 2: pos {0.4} vs neg {0.1, 0.3, 0.3} -> 1
    assert roc_auc(y, p) == pytest.approx((0.75 + 1 + 1) / 3)
    # a class absent from y_true (class 2 here) is skipped
    assert roc_auc([0, 1, 0], p[[0, 1, 3]]) == pytest.approx(np.mean([binary_auc([1, 0, 1], [0.6, 0.2, 0.3]),
                                                                      binary_auc([0, 1, 0], [0.3, 0.5, 0.4])]))
    # two classes: the AUC of class 1's probability
    assert roc_auc([0, 1, 1], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])) == 1.0


def test_classification_scores_from_logits():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.0]])
    scores = classification_scores([0, 1, 1, 1], logits)
    assert scores["acc"] == 0.5 and scores["balanced_acc"] == pytest.approx((1 + 1 / 3) / 2)
    # P(class 1): 0.12, 0.73, 0.27, 0.38 -> the one negative (0.12) is below all three positives
    assert scores["auc"] == 1.0
    np.testing.assert_allclose(softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])), [[0.5, 0.5], [1.0, 0.0]])


class KeywordModel:
    """A fake dual encoder: a text's embedding is the colour it names; an image's is its dominant channel."""

    logit_scale = torch.tensor(math.log(10.0))
    WORDS = ("red", "green", "blue")

    def embed_texts(self, texts):
        out = torch.zeros(len(texts), 3)
        for i, t in enumerate(texts):
            out[i, [w in t for w in self.WORDS].index(True)] = 1
        return out

    def embed_images(self, images, batch_size=32):
        means = torch.tensor(np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images]))
        return torch.nn.functional.normalize(means, dim=-1)


def _task(labels, templates=("a {} image.", "{}.")) -> ZeroShotTask:
    samples = []
    for y in labels:
        image = np.full((8, 8, 3), 20, dtype=np.uint8)
        image[..., y] = 200
        samples.append(Sample([], "", "", "closed", "t", "test", {}, image))
    names = {"red": ["red"], "green": ["green", "green colour"], "blue": ["blue"]}
    return ZeroShotTask("colours", ["red", "green", "blue"], names, list(templates), samples, list(labels))


def test_class_embeddings_average_the_prompts():
    class Fixed:
        def embed_texts(self, texts):
            table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8]}
            return torch.tensor([table[t] for t in texts])

    emb = class_embeddings(Fixed(), [["a", "b"], ["c"]])
    torch.testing.assert_close(emb, torch.tensor([[2 ** -0.5, 2 ** -0.5], [0.6, 0.8]]))


def test_evaluator_with_a_model_that_sees_the_class():
    task = _task([0, 1, 2, 2, 1, 0, 0])
    assert task.class_texts()[1] == ["a green image.", "a green colour image.", "green.", "green colour."]
    scores = dict(evaluate_zero_shot(KeywordModel(), task, batch_size=3))
    assert scores["acc"] == 1.0 and scores["balanced_acc"] == 1.0 and scores["auc"] == 1.0
    assert scores["n"] == 7 and scores["n_classes"] == 3
    assert scores["recall_by_class"] == {"red": 1.0, "green": 1.0, "blue": 1.0}
    with pytest.raises(ValueError, match="exactly one"):
        _task([0], templates=("no placeholder",))


def test_task_sampling_and_captions_are_deterministic():
    task = _task([0] * 6 + [1] * 3 + [2])
    assert task.captions(seed=1) == task.captions(seed=1)
    assert all(("red" in c) == (y == 0) for c, y in zip(task.captions(), task.labels))
    assert Counter(task.per_class(2).labels) == {0: 2, 1: 2, 2: 1}
    assert task.subset(4, seed=0).labels == task.subset(4, seed=0).labels and len(task.subset(4).samples) == 4


needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")


@needs_data
def test_builtin_tasks_on_the_shared_data():
    pneu = build_task("pneumoniamnist", SHARED_DATA / "pneumoniamnist")
    assert len(pneu.samples) == 624 and Counter(pneu.labels) == {0: 234, 1: 390} and pneu.classes == ["normal", "pneumonia"]
    organ = build_task("vqa_rad_organ", SHARED_DATA / "vqa_rad")
    assert Counter(organ.classes[y] for y in organ.labels) == {"chest": 73, "abdomen": 70, "head": 60}  # one per image
    test_images = vqa_rad_images(SHARED_DATA / "vqa_rad", "test")
    train = build_task("vqa_rad_organ", SHARED_DATA / "vqa_rad", "train", exclude_images=test_images)
    assert len(train.samples) == 111 and not {s.images[0] for s in train.samples} & set(test_images)
    roco = build_task("roco_modality", SHARED_DATA / "rocov2_sample")
    assert Counter(roco.classes[y] for y in roco.labels) == {"ct": 36, "x-ray": 34, "mri": 13, "ultrasound": 8, "angiography": 6}
    brain = build_task("image_folder", SHARED_DATA / "brain_tumor_mri")
    assert brain.classes == ["glioma", "meningioma", "no tumor", "pituitary"] and len(brain.samples) == 400
    assert brain.names["pituitary"] == ["pituitary tumor", "a pituitary adenoma"]  # the built-in prompts of the set


@needs_data
def test_zero_shot_scores_on_real_images():
    task = build_task("roco_modality", SHARED_DATA / "rocov2_sample").subset(6)
    scores = zero_shot_scores(KeywordModel(), ZeroShotTask(
        task.name, ["red", "green", "blue"], {"red": ["red"], "green": ["green"], "blue": ["blue"]}, ["{}"],
        task.samples, [y % 3 for y in task.labels]))
    # the keyword model picks each image's dominant colour channel (ties: the first)
    dominant = [int(np.argmax(np.asarray(load_image(s), dtype=np.float32).mean(axis=(0, 1)))) for s in task.samples]
    assert scores["n"] == 6 and scores["acc"] == np.mean([d == y % 3 for d, y in zip(dominant, task.labels)])
