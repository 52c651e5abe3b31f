"""Training never loses or corrupts work: divergence, overwrites, torn checkpoints, changed configs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from medqwen.data.synthetic import make_synthetic_vqa
from medqwen.errors import TrainingDiverged
from medqwen.models import tiny_mini
from medqwen.training import DataSpec, StageConfig, Trainer
from medqwen.training.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from medqwen.training.pipeline import prepare_output_dir


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_synthetic_vqa(tmp_path_factory.mktemp("syn"), n_images=6)["train"]


def _stage(**kw):
    base = dict(name="s", trainable=["projector"], data=[DataSpec(format="synthetic")], lr=1e-3, max_steps=4,
                batch_size=2, checkpoint_every=1)
    return StageConfig(**{**base, **kw})


def test_non_finite_steps_are_skipped_and_training_stops_before_the_weights_break(samples, tmp_path, monkeypatch):
    trainer = Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0)
    real_forward = trainer.vlm.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # step 1 is fine, every later loss is NaN
        out = real_forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 1:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.vlm, "forward", poisoned)
    with pytest.warns(UserWarning, match="non-finite loss"), pytest.raises(TrainingDiverged, match="3 steps in a row"):
        trainer.run_stage(_stage(max_steps=10), samples)
    assert all(torch.isfinite(p).all() for p in trainer.vlm.projector.parameters())
    steps = [c.name for c in list_checkpoints(tmp_path / "s" / "checkpoints")]
    assert steps and all(torch.isfinite(t).all() for c in list_checkpoints(tmp_path / "s" / "checkpoints")
                          for t in __import__("safetensors.torch").torch.load_file(str(c / "trainable.safetensors")).values())
    rows = [json.loads(line) for line in open(tmp_path / "s" / "metrics.jsonl")]
    assert [r.get("skipped", False) for r in rows] == [False, True, True, True]
    assert not (tmp_path / "s" / "final").exists()


def test_a_checkpoint_with_non_finite_weights_is_refused_and_older_ones_survive(tmp_path):
    good = {"w": torch.ones(2)}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    save_checkpoint(tmp_path, trainable=good, optimizer=optimizer, state={"step": 1})
    save_checkpoint(tmp_path, trainable=good, optimizer=optimizer, state={"step": 2})
    with pytest.raises(ValueError, match=r"non-finite values in \['w'\]"):
        save_checkpoint(tmp_path, trainable={"w": torch.tensor([1.0, math.inf])}, optimizer=optimizer, state={"step": 3})
    assert [c.name for c in list_checkpoints(tmp_path)] == ["checkpoint-0000001", "checkpoint-0000002"]


def test_resume_falls_back_to_an_intact_checkpoint_and_cleans_up(samples, tmp_path):
    stage = _stage()
    first = Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0)
    first.run_stage(stage, samples, stop_after=3)  # checkpoints 2 and 3 kept
    ckpts = tmp_path / "s" / "checkpoints"
    (latest_checkpoint(ckpts) / "trainable.safetensors").write_bytes(b"torn")
    (ckpts / ".tmp-checkpoint-abc").mkdir()
    resumed = Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        resumed.run_stage(stage, samples, resume=True)
    assert not (ckpts / ".tmp-checkpoint-abc").exists()
    steps = [json.loads(line)["step"] for line in open(tmp_path / "s" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]  # step 3 was logged, then redone from checkpoint 2: no duplicate rows


def test_resume_with_a_changed_stage_config_is_refused_by_name(samples, tmp_path):
    Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0).run_stage(_stage(), samples)
    with pytest.raises(ValueError, match=r"fields \['max_steps'\] differ"):
        Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0).run_stage(_stage(max_steps=6), samples, resume=True)
    again = Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0)
    again.run_stage(_stage(checkpoint_every=2), samples, resume=True)  # checkpoint cadence does not matter


def test_a_non_empty_output_folder_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    (out / "stage").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="pass --resume .* --overwrite"):
        prepare_output_dir(out, resume=False, overwrite=False)
    prepare_output_dir(out, resume=True, overwrite=False)
    assert (out / "results.json").exists()
    prepare_output_dir(out, resume=False, overwrite=True)
    assert not out.exists()
    with pytest.raises(ValueError, match="choose one"):
        prepare_output_dir(out, resume=True, overwrite=True)


def test_a_missing_data_path_in_a_late_stage_is_found_before_training(tmp_path):
    from medqwen.training import ExperimentConfig
    from medqwen.training.pipeline import run_experiment

    good = _stage(data=[DataSpec(format="synthetic", path=str(tmp_path))])
    late = _stage(name="s3", data=[DataSpec(format="vqa_rad", path=str(tmp_path / "vqa_rda"))])
    config = ExperimentConfig(model="tiny-mini", stages=[good, late], output_dir=str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match=r"stage 's3' data\[0\]: field 'path' = .*vqa_rda' does not exist"):
        run_experiment(config)
    assert not (tmp_path / "run").exists()
