import json

import pytest
import torch
from safetensors.torch import load_file

from medqwen.data.synthetic import make_synthetic_vqa
from medqwen.models import tiny_mini
from medqwen.training import StageConfig, DataSpec, Trainer, lr_at
from medqwen.training.checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return make_synthetic_vqa(tmp_path_factory.mktemp("syn"), n_images=8)["train"]


def _stage(**kw):
    base = dict(name="s3", trainable=["adapter", "projector"], data=[DataSpec(format="synthetic")],
                adapter={"kind": "sslora", "r": 8, "num_experts": 4, "top_k": 2, "target_modules": "llama", "dropout": 0.1},
                lr=1e-3, max_steps=5, batch_size=3, checkpoint_every=2)
    return StageConfig(**{**base, **kw})


def _final_tensors(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_killed_and_resumed_run_matches_uninterrupted(samples, tmp_path):
    stage = _stage()
    whole = Trainer(tiny_mini(seed=0), output_dir=tmp_path / "whole", seed=0)
    whole.run_stage(stage, samples)
    expected = _final_tensors(whole)

    first = Trainer(tiny_mini(seed=0), output_dir=tmp_path / "killed", seed=0)
    stopped = first.run_stage(stage, samples, stop_after=3)  # "killed" after step 3; last checkpoint: step 2
    assert stopped["stopped_at"] == 3
    assert latest_checkpoint(tmp_path / "killed" / "s3" / "checkpoints").name == "checkpoint-0000002"
    resumed = Trainer(tiny_mini(seed=0), output_dir=tmp_path / "killed", seed=0)
    resumed.run_stage(stage, samples, resume=True)
    got = _final_tensors(resumed)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    a = load_file(tmp_path / "whole" / "s3" / "final" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "s3" / "final" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_are_complete_and_pruned(samples, tmp_path):
    trainer = Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0)
    trainer.run_stage(_stage(max_steps=6, checkpoint_every=1), samples)
    folders = sorted(p.name for p in (tmp_path / "s3" / "checkpoints").iterdir())
    assert folders == ["checkpoint-0000005", "checkpoint-0000006"]  # keep=2, no temporary leftovers
    files = sorted(p.name for p in (tmp_path / "s3" / "checkpoints" / "checkpoint-0000006").iterdir())
    assert files == ["adapter", "optimizer.json", "optimizer.safetensors", "rng.safetensors", "trainable.safetensors", "trainer_state.json"]
    lines = (tmp_path / "s3" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert all(key in json.loads(lines[0]) for key in ("loss", "aux_loss", "lr", "samples_per_s"))
    assert any((tmp_path / "s3" / "tensorboard").iterdir())


def test_training_reduces_loss_and_freezes_the_base(samples, tmp_path):
    model = tiny_mini(seed=0)
    frozen = {n: p.detach().clone() for n, p in model.lm.named_parameters()}
    trainer = Trainer(model, output_dir=tmp_path, seed=0)
    stage = _stage(max_steps=25, lr=5e-3, batch_size=4, checkpoint_every=100, adapter={"kind": "lora", "r": 8, "target_modules": "llama"})
    trainer.run_stage(stage, samples)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "s3" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    for name, param in trainer.vlm.lm.named_parameters():
        key = name.replace(".base.", ".")
        if key in frozen:
            assert torch.equal(param, frozen[key]), name


def test_adapter_stage_without_adapter_is_refused(samples, tmp_path):
    trainer = Trainer(tiny_mini(seed=0), output_dir=tmp_path)
    with pytest.raises(ValueError, match="trains 'adapter' but no stage so far defines field 'adapter'"):
        trainer.run_stage(_stage(adapter=None), samples)


def test_lr_schedule_warmup_then_cosine():
    stage = _stage(lr=1.0, warmup_ratio=0.1, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, stage) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_lr_groups_give_a_group_its_own_peak_lr(samples, tmp_path):
    stage = _stage(trainable=["projector", "language"], adapter=None, lr=1e-3, lr_groups={"language": 1e-5},
                   max_steps=2, warmup_ratio=0.0, min_lr_ratio=1.0)
    trainer = Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0)
    params = trainer._set_trainable(stage)
    groups = trainer._param_groups(stage, params)
    language = {id(p) for p in trainer.vlm.trainable_groups()["language"]}
    for group in groups:
        in_language = {id(p) in language for p in group["params"]}
        assert len(in_language) == 1  # a group never mixes model groups
        assert group["lr_scale"] == (1e-2 if in_language.pop() else 1.0)
        assert group["weight_decay"] == (stage.weight_decay if group["params"][0].ndim >= 2 else 0.0)
    assert sum(len(g["params"]) for g in groups) == len(params)
    trainer.run_stage(stage, samples)
    logged = [json.loads(line) for line in open(tmp_path / "s3" / "metrics.jsonl")]
    assert logged[0]["lr"] == pytest.approx(1e-3)  # the stage schedule; groups scale it


def test_merge_adapter_folds_plain_lora_into_the_language_model(samples, tmp_path):
    """A stage with merge_adapter ends without an adapter; its final (language weights) reloads, on
    resume too, to the same outputs; a later stage attaches a new adapter on top of the merged model."""
    from medqwen.training.batches import make_batch

    merge = _stage(name="s1", trainable=["adapter", "projector"], adapter={"kind": "lora", "r": 4, "target_modules": "llama"},
                   merge_adapter=True, max_steps=3)
    later = _stage(name="s2", max_steps=2)
    trainer = Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0)
    trainer.run_stage(merge, samples)
    assert trainer.adapter is None and "language" in trainer.trained_groups
    fresh = dict(tiny_mini(seed=0).lm.named_parameters())
    changed = [n for n, p in trainer.vlm.lm.named_parameters() if "q_proj" in n and not torch.equal(p, fresh[n])]
    assert changed  # the LoRA update now lives in the base weights
    batch = make_batch(trainer.vlm, samples[:3], with_answers=True, cache=None)
    with torch.no_grad():
        expected = trainer.vlm.eval()(**batch).loss
    resumed = Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0)
    resumed.run_stage(merge, samples, resume=True)  # finished: loads final/ (merged language weights)
    with torch.no_grad():
        torch.testing.assert_close(resumed.vlm.eval()(**batch).loss, expected)
    trainer.run_stage(later, samples)
    assert trainer.adapter is not None and (tmp_path / "s2" / "final" / "adapter" / "adapter_model.safetensors").is_file()


def test_merge_adapter_needs_an_adapter():
    from medqwen.training.config import ConfigError

    with pytest.raises(ConfigError, match="merge_adapter"):
        _stage(adapter=None, trainable=["projector"], merge_adapter=True)


def test_fold_residual_resumes_exactly_and_saves_w0(samples, tmp_path):
    """adapter fold_residual: true (W_res folded into the frozen base for speed): a killed run resumes
    bit for bit, and model/ holds W0 for the language group trained in an earlier stage."""
    language = _stage(name="s2", trainable=["language"], adapter=None, max_steps=2, lr=1e-4)
    stage = _stage(adapter={"kind": "sslora", "r": 8, "num_experts": 4, "top_k": 2, "target_modules": "llama", "fold_residual": True})

    def run(folder, stop_after=None, resume=False, fold=True):
        trainer = Trainer(tiny_mini(seed=0), output_dir=tmp_path / folder, seed=0)
        trainer.run_stage(language, samples, resume=resume)
        adapted = stage if fold else _stage(adapter={**stage.adapter, "fold_residual": False})
        trainer.run_stage(adapted, samples, stop_after=stop_after, resume=resume)
        return trainer

    whole = run("whole")
    run("killed", stop_after=3)
    resumed = run("killed", resume=True)
    expected, got = _final_tensors(whole), _final_tensors(resumed)
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in expected)
    run("unfolded", fold=False)
    saved = load_file(tmp_path / "whole" / "s3" / "final" / "model" / "trainable.safetensors")
    reference = load_file(tmp_path / "unfolded" / "s3" / "final" / "model" / "trainable.safetensors")
    language_keys = [k for k in saved if k.startswith("lm.") and "_proj" in k]
    assert saved.keys() == reference.keys() and language_keys
    assert all(torch.equal(saved[k], reference[k]) for k in language_keys)  # W0, not W0 - W_res


def test_fold_residual_refuses_a_trained_language_group(samples, tmp_path):
    stage = _stage(trainable=["adapter", "language"], adapter={"kind": "sslora", "r": 8, "num_experts": 4, "fold_residual": True})
    with pytest.raises(ValueError, match="fold_residual"):
        Trainer(tiny_mini(seed=0), output_dir=tmp_path, seed=0).run_stage(stage, samples)
