"""Every dataset of an experiment is read and checked before the first step (and before the run folder)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from medqwen.data import Sample
from medqwen.models import tiny_mini
from medqwen.training import ConfigError, DataSpec, ExperimentConfig, StageConfig, Trainer, load_data, run_experiment
from medqwen.training import pipeline
from medqwen.training.trainer import stage_fingerprint


def _rad(root, names=("a.jpg", "b.jpg", "c.jpg", "d.jpg"), bad=()):
    """A VQA-RAD-format folder: one noise JPEG per name (those in `bad` truncated) and one question each."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(root / "images" / name)
        if name in bad:
            data = (root / "images" / name).read_bytes()
            (root / "images" / name).write_bytes(data[: len(data) // 2])
    rows = [{"qid": i, "image_name": n, "image_organ": "HEAD", "answer": "yes" if i % 2 else "no", "answer_type": "CLOSED",
             "question_type": "PRES", "question": "Is there a lesion?", "phrase_type": "freeform"} for i, n in enumerate(names)]
    (root / "trainset.json").write_text(json.dumps(rows))
    return root


def _experiment(tmp_path, first, second, **kw):
    stage = dict(trainable=["projector"], lr=1e-3, max_steps=1, batch_size=2)
    return ExperimentConfig(model=kw.pop("model", "tiny-mini"), output_dir=str(tmp_path / "run"),
                            stages=[StageConfig(name="one", data=[first], **stage), StageConfig(name="two", data=[second], **stage)], **kw)


def test_bad_images_are_listed_by_name_and_skipped_on_request(tmp_path, caplog):
    root = _rad(tmp_path / "rad", bad=("b.jpg",))
    (root / "images" / "c.jpg").write_bytes(b"")
    with pytest.raises(ValueError) as err:
        load_data([DataSpec(format="vqa_rad", path=str(root))])
    message = str(err.value)
    assert message.startswith(f"data[0] (vqa_rad at {root}, split 'train'): 2 of 4 samples have an image that cannot be used:")
    assert "sample 1 (id=1): " in message and "b.jpg: unreadable image" in message and "c.jpg: empty file (0 bytes)" in message
    assert "set 'skip_invalid: true' on this dataset (data[0])" in message
    with caplog.at_level(logging.WARNING):
        samples = load_data([DataSpec(format="vqa_rad", path=str(root), skip_invalid=True)])
    assert [s.extra["qid"] for s in samples] == [0, 3]
    assert "b.jpg: unreadable image" in caplog.text and "c.jpg: empty file" in caplog.text  # header pass, decode pass


def test_an_empty_dataset_is_an_error(tmp_path):
    root = tmp_path / "rad"
    root.mkdir()
    (root / "trainset.json").write_text("[]")
    with pytest.raises(ValueError, match=r"data\[0\] \(vqa_rad at .*, split 'train'\): no samples; check 'path'"):
        load_data([DataSpec(format="vqa_rad", path=str(root))])
    bad = _rad(tmp_path / "all_bad", names=("a.jpg",), bad=("a.jpg",))
    with pytest.raises(ValueError, match=r"no samples left \(skipped bad image: 1\)"):
        load_data([DataSpec(format="vqa_rad", path=str(bad), skip_invalid=True)])
    with pytest.raises(ConfigError, match="field 'limit' = 0 must be an integer >= 1"):
        DataSpec(format="vqa_rad", path=str(root), limit=0)


@pytest.mark.parametrize("second, message", [
    (lambda good, bad: DataSpec(format="vqa_rad", path=str(bad)), "stage 'two' data[0] (vqa_rad at"),
    (lambda good, bad: DataSpec(format="vqa_rad", path=str(good), options={"fooo": 1}),
     "stage 'two' data[0]: field 'options': reader 'vqa_rad': unknown option(s) ['fooo']"),
])
def test_problems_of_a_late_stage_are_found_before_the_first_step(tmp_path, second, message):
    good, bad = _rad(tmp_path / "good"), _rad(tmp_path / "bad", bad=("d.jpg",))
    config = _experiment(tmp_path, DataSpec(format="vqa_rad", path=str(good)), second(good, bad))
    with pytest.raises(ValueError) as err:
        run_experiment(config, log=lambda *a: None)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing trained, no run folder


def test_a_model_name_typo_is_named_before_the_run_folder(tmp_path):
    good = _rad(tmp_path / "good")
    config = _experiment(tmp_path, DataSpec(format="vqa_rad", path=str(good)), DataSpec(format="vqa_rad", path=str(good)),
                         model="tiny-minii")
    with pytest.raises(ValueError, match=r"unknown model 'tiny-minii' \(did you mean 'tiny-mini'\?\).*\['medqwen-mini', 'tiny-mini'"):
        run_experiment(config, log=lambda *a: None)
    assert not (tmp_path / "run").exists()


def test_a_run_with_skip_invalid_trains_on_the_good_samples_and_counts_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDQWEN_FEATURE_CACHE", "off")
    good, bad = _rad(tmp_path / "good"), _rad(tmp_path / "bad", bad=("a.jpg", "d.jpg"))
    config = _experiment(tmp_path, DataSpec(format="vqa_rad", path=str(good)),
                         DataSpec(format="vqa_rad", path=str(bad), skip_invalid=True))
    results = run_experiment(config, log=lambda *a: None, blank_control=False)
    assert results["skipped"] == {"bad image": 2}
    assert json.loads((tmp_path / "run" / "final" / "stage_done.json").read_text())["has_adapter"] is False


def test_images_with_cached_features_are_not_decoded_again(tmp_path, monkeypatch):
    root = _rad(tmp_path / "rad", names=("a.jpg", "b.jpg"))
    samples = [Sample([str(root / "images" / n)], "q", "yes", "closed", "t", "train") for n in ("a.jpg", "b.jpg")]
    trainer = Trainer(tiny_mini(seed=0), output_dir=tmp_path / "run")
    trainer.feature_cache.get(samples[:1])
    decoded = []
    monkeypatch.setattr(pipeline, "decode_files", decoded.append)
    config = _experiment(tmp_path, DataSpec(format="vqa_rad", path=str(root)), DataSpec(format="vqa_rad", path=str(root)))
    decode = pipeline._image_decoder(trainer, config)
    for sample in samples:
        decode(sample)
    assert decoded == [samples[1]]
    config.stages[1].trainable = ["projector", "vision"]  # features of a tower that trains are not a proof
    assert pipeline._image_decoder(trainer, config) == decoded.append


def test_the_new_field_keeps_older_checkpoints_resumable():
    spec = dict(name="s", trainable=["projector"], max_steps=1)
    assert "skip_invalid" not in stage_fingerprint(StageConfig(data=[DataSpec(format="vqa_rad")], **spec))["data"][0]
    assert stage_fingerprint(StageConfig(data=[DataSpec(format="vqa_rad", skip_invalid=True)], **spec))["data"][0]["skip_invalid"]
