"""train_pairs checkpoints: an interrupted run resumed from its checkpoint ends with the same weights."""

from __future__ import annotations

import pytest
import torch

from medqwen.dual import MethodSpec, apply_method, task_pairs, tiny_clip, train_pairs
from medqwen.training.checkpoint import list_checkpoints

from .conftest import colour_task

SMALL = {"r": 8, "num_experts": 4, "top_k": 2}


class Interrupted(Exception):
    pass


def _run(method: str, checkpoint_dir=None, stop_at: int | None = None, steps: int = 5):
    trained = apply_method(tiny_clip(seed=0), MethodSpec(method, seed=1, **SMALL))

    def log(record):
        if stop_at is not None and record["step"] == stop_at:
            raise Interrupted  # after the checkpoint of an earlier step, before this step's own

    history = train_pairs(trained, task_pairs(colour_task(n_per_class=2), seed=0), steps=steps, batch_size=4, lr=1e-2,
                          head_lr=1e-2, seed=0, log_every=1, log=log, checkpoint_dir=checkpoint_dir, checkpoint_every=2)
    return trained, history


@pytest.mark.parametrize("method", ["sslora", "full_moe"])
def test_resume_gives_the_uninterrupted_weights(tmp_path, method):
    straight, straight_history = _run(method)
    with pytest.raises(Interrupted):
        _run(method, tmp_path / "ckpt", stop_at=3)
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["checkpoint-0000002"]
    resumed, history = _run(method, tmp_path / "ckpt")
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["loss"] for h in history] == [h["loss"] for h in straight_history]
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["checkpoint-0000005"]
    # a finished run's checkpoint makes a rerun skip training: same weights, nothing trained
    again, _ = _run(method, tmp_path / "ckpt")
    for (name, a), (_, b) in zip(straight.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), name


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    _run("lora", tmp_path / "ckpt", steps=2)
    with pytest.raises(ValueError, match=r"other training settings.*'steps': \(2, 4\)"):
        _run("lora", tmp_path / "ckpt", steps=4)
