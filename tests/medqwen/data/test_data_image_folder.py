"""image_folder reader: root/<split>/<class>/<image> -> closed multiple-choice questions."""

import pytest
from PIL import Image

from medqwen.data import read_dataset
from medqwen.data.image_folder import join_options, read_image_folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "scans"
    for split, n in (("train", 5), ("test", 2)):
        for cls, colour in (("glioma", (200, 0, 0)), ("no_tumor", (0, 0, 200)), ("pituitary", (0, 200, 0))):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), colour).save(root / split / cls / f"img{i}.jpg")
    (root / "train" / "glioma" / "notes.txt").write_text("not an image")
    return root


def test_every_image_becomes_a_question_with_candidates(folder):
    samples = read_dataset("image_folder", folder, "test")
    assert len(samples) == 6
    first = samples[0]
    assert first.question == "Which class does this image belong to: glioma, no tumor or pituitary?"
    assert first.answer == "glioma" and first.answer_type == "closed" and first.split == "test"
    assert first.extra["candidates"] == ["glioma", "no tumor", "pituitary"]
    assert first.extra["class_folder"] == "glioma" and first.extra["file"] == "glioma/img0.jpg"
    assert first.source == "scans" and first.images[0].endswith("test/glioma/img0.jpg")
    assert [s.answer for s in samples] == ["glioma"] * 2 + ["no tumor"] * 2 + ["pituitary"] * 2


def test_classes_names_template_and_seeded_subsample(folder):
    kw = dict(classes=["pituitary", "glioma"], class_names={"pituitary": "Pituitary tumour"}, per_class=3,
              question="Which tumour is this: {options}?")
    a = read_image_folder(folder, "train", seed=1, **kw)
    assert len(a) == 6 and {s.answer for s in a} == {"pituitary tumour", "glioma"}
    assert a[0].question == "Which tumour is this: pituitary tumour or glioma?"
    assert a[0].extra["candidates"] == ["pituitary tumour", "glioma"]
    assert [s.images for s in read_image_folder(folder, "train", seed=1, **kw)] == [s.images for s in a]  # deterministic
    picks = {seed: tuple(s.extra["file"] for s in read_image_folder(folder, "train", seed=seed, **kw)) for seed in range(6)}
    assert len(set(picks.values())) > 1  # the seed chooses the subsample
    assert all(sum(s.extra["class_folder"] == c for s in a) == 3 for c in ("pituitary", "glioma"))


def test_bad_input_is_a_clear_error(folder):
    with pytest.raises(FileNotFoundError, match=r"class folder\(s\) \['meningioma'\] not found"):
        read_image_folder(folder, "test", classes=["glioma", "meningioma"])
    with pytest.raises(FileNotFoundError, match="no folder for split 'val'"):
        read_image_folder(folder, "val")
    with pytest.raises(ValueError, match="not among the classes"):
        read_image_folder(folder, "test", classes=["glioma", "pituitary"], class_names={"no_tumor": "none"})
    with pytest.raises(ValueError, match="not distinct"):
        read_image_folder(folder, "test", class_names={"glioma": "pituitary"})


def test_join_options():
    assert join_options(["a"]) == "a" and join_options(["a", "b"]) == "a or b" and join_options(["a", "b", "c"]) == "a, b or c"


def test_real_brain_tumor_folder(data_dir):
    root = data_dir("brain_tumor_mri")
    samples = read_image_folder(root, "test", classes=["glioma", "meningioma", "pituitary"], per_class=4)
    assert len(samples) == 12 and samples[0].extra["candidates"] == ["glioma", "meningioma", "pituitary"]
