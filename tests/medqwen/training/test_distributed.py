"""DDP == one process: `torchrun --nproc_per_node 2 -m medqwen.cli train` (gloo, CPU) with batch b
reaches the weights of one process with batch 2b; only rank 0 writes; each step is logged once.

The loss of a distributed step is the token mean over the answer tokens of both ranks (each rank's
token-mean loss weighted by its share of the tokens), so the two runs compute the same gradients up
to float rounding (different summation order, different padding). TOLERANCE bounds what that
rounding does to the weights after 4 + 3 AdamW steps (Adam divides by sqrt(v), so relative
rounding of a gradient entry becomes absolute noise of up to ~lr * 1e-3 in its update). The balance
loss of the router is per rank (as in Switch/Mixtral implementations) and is switched off here
(`aux_loss_coef: 0`); with it on, the runs differ by what that term contributes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medqwen.data.synthetic import make_synthetic_vqa
from medqwen.training import load_experiment, run_experiment

WORKER = Path(__file__).with_name("ddp_worker.py")
TOLERANCE = 1e-5  # max |w_ddp - w_single| over every trained weight (measured: ~1e-7, see README)
N_IMAGES, TRAIN = 8, 13  # 13 samples, global batch 4: the epoch's last batch has 1 sample, rank 1 none

CONFIG = """model: tiny-mini
seed: 0
output_dir: {out}
stages:
  - name: align
    trainable: [projector]
    data: [{{format: synthetic, path: "{data}", split: train, options: {{n_images: {n_images}}}, limit: {train}}}]
    lr: 2.0e-3
    max_steps: 4
    batch_size: {batch}
    checkpoint_every: 2
  - name: sslora
    trainable: [adapter, projector]
    adapter: {{kind: sslora, r: 8, num_experts: 4, top_k: 2, init: spectral, aux_loss_coef: 0, target_modules: llama}}
    data: [{{format: synthetic, path: "{data}", split: train, options: {{n_images: {n_images}}}, limit: {train}}}]
    lr: 2.0e-3
    max_steps: 3
    batch_size: {batch}
    grad_accum: 2
    checkpoint_every: 2
eval:
  - {{format: synthetic, path: "{data}", split: test, options: {{n_images: {n_images}}}, limit: 4}}
"""


def _gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


def _config(tmp_path: Path, name: str, batch: int, data: Path) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(out=tmp_path / name, data=data, batch=batch, n_images=N_IMAGES, train=TRAIN))
    return path


def _weights(final: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(final.rglob("*.safetensors")):
        tensors.update({f"{file.relative_to(final)}:{k}": v for k, v in load_file(str(file)).items()})
    return tensors


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with the gloo backend is not available in this torch build")
def test_two_cpu_processes_match_one_process_with_the_global_batch(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_synthetic_vqa(data, n_images=N_IMAGES)  # generated before the launch: the ranks only read it
    audit, svd = tmp_path / "audit", tmp_path / "svd-ddp"
    audit.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSLORA_CACHE": str(svd), "MEDQWEN_FEATURE_CACHE": "off",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[3] / "src"), os.environ.get("PYTHONPATH")]))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
               str(audit), str(tmp_path / "ddp"), str(svd), "--", "train", str(_config(tmp_path, "ddp", 2, data))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "rank 0 of 2" in done.stdout and "rank 1 of 2" in done.stdout, done.stdout

    # the reference: one process (this one), global batch 2 x 2
    monkeypatch.setenv("SSLORA_CACHE", str(tmp_path / "svd-single"))
    monkeypatch.setenv("MEDQWEN_FEATURE_CACHE", "off")
    run_experiment(load_experiment(_config(tmp_path, "single", 4, data)), log=lambda *_: None)

    ddp, single = _weights(tmp_path / "ddp" / "final"), _weights(tmp_path / "single" / "final")
    assert ddp.keys() == single.keys() and any("adapter" in k for k in ddp) and any("model" in k for k in ddp)
    worst = max((ddp[k].double() - single[k].double()).abs().max().item() for k in ddp)
    print(f"max |DDP - single process| over {sum(t.numel() for t in ddp.values())} trained weights: {worst:.3g}")
    assert worst <= TOLERANCE, f"max |DDP - single process| = {worst:.3g} > {TOLERANCE}"
    moved = _weights(tmp_path / "ddp" / "align" / "final")  # the weights did train (the comparison means something)
    assert any(not torch.equal(moved[k], ddp[k]) for k in moved.keys() & ddp.keys())

    for stage, steps in (("align", 4), ("sslora", 3)):  # each step logged once, with the global loss
        rows, reference = _rows(tmp_path / "ddp" / stage / "metrics.jsonl"), _rows(tmp_path / "single" / stage / "metrics.jsonl")
        assert [r["step"] for r in rows] == list(range(1, steps + 1))
        for got, want in zip(rows, reference):
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-5), (stage, got["step"])
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), (stage, got["step"])
    assert (tmp_path / "ddp" / "results.json").is_file() and (tmp_path / "ddp" / "eval").is_dir()

    logs = {r: json.loads((audit / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert all(log["world_size"] == 2 and log["distributed_type"] == "MULTI_CPU" for log in logs.values())
    assert logs[1]["events"] == [], f"rank 1 wrote: {logs[1]['events'][:10]}"
    written = {Path(path) for _, path in logs[0]["events"]}
    run = tmp_path / "ddp"
    for expected in (run / "align" / "metrics.jsonl", run / "results.json"):
        assert expected.resolve() in written, f"the audit did not see rank 0 write {expected}"
    assert any(svd.resolve() in p.parents for p in written), "rank 0 did not write the spectral init cache"
    assert any((run / "sslora" / "tensorboard").resolve() in p.parents for p in written)


@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with the gloo backend is not available in this torch build")
def test_fsdp2_shards_and_trains_the_adapter_on_two_cpu_processes(tmp_path):
    """torch's FSDP2 (`fully_shard`) on CPU with gloo, outside the trainer (which refuses FSDP): the
    adapter injected into the full model (spectral init once: rank 0 first, rank 1 reads the SVD
    cache), decoder layers and root sharded, 3 steps; the gathered weights equal one process's."""
    sys.path.insert(0, str(Path(__file__).parent))
    import fsdp_worker

    data = tmp_path / "data"
    samples = list(make_synthetic_vqa(data, n_images=N_IMAGES)["train"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSLORA_CACHE": str(tmp_path / "svd-fsdp"), "MEDQWEN_FEATURE_CACHE": "off",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[3] / "src"), os.environ.get("PYTHONPATH")]))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("fsdp_worker.py")), str(tmp_path), str(data)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads((tmp_path / "fsdp.json").read_text())
    assert report["world_size"] == 2 and report["sharded"]  # trainable parameters really are DTensor shards
    assert any(shape[0] < full.shape[0] for name, shape in report["sharded"].items()
               for full in [load_file(str(tmp_path / "fsdp_trainable.safetensors"))[name]])

    model = fsdp_worker.build(str(tmp_path / "svd-single"))
    start = fsdp_worker.full_trainable(model)
    losses = fsdp_worker.train(model, samples, batch=2 * fsdp_worker.BATCH)
    want, got = fsdp_worker.full_trainable(model), load_file(str(tmp_path / "fsdp_trainable.safetensors"))
    assert got.keys() == want.keys()
    worst = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
    print(f"FSDP2 vs one process: max |diff| {worst:.3g} (weights moved up to "
          f"{max((want[k] - start[k]).abs().max().item() for k in want):.3g})")
    assert worst <= TOLERANCE
    assert report["losses"] == pytest.approx(losses, abs=1e-5)


def test_sharded_accelerate_types_are_refused_before_training(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from medqwen.models import tiny_mini
    from medqwen.training import Trainer
    from medqwen.training.trainer import make_accelerator

    for variable, kind in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        with monkeypatch.context() as env:
            env.setenv(variable, "true")
            with pytest.raises(ValueError, match=f"distributed type {kind} is not supported by the medqwen trainer"):
                make_accelerator()
    fake = SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(ValueError, match="FSDP is not supported"):
        Trainer(tiny_mini(seed=0), output_dir=tmp_path, accelerator=fake)


@pytest.mark.parametrize("n", [12, 13, 14, 15])
def test_the_ranks_batches_are_the_one_process_batch(n, tmp_path):
    """Rank r's micro-batch is every world-th sample of the one-process global batch; a rank left
    without samples at the end of an epoch gets filler samples marked not real (weighted 0)."""
    from types import SimpleNamespace

    from medqwen.models import tiny_mini
    from medqwen.training import DataSpec, StageConfig, Trainer

    samples = list(range(n))
    one = StageConfig(name="s", trainable=["projector"], data=[DataSpec(format="synthetic")], batch_size=4)
    per_rank = StageConfig(name="s", trainable=["projector"], data=[DataSpec(format="synthetic")], batch_size=2)
    single = Trainer(tiny_mini(seed=0), output_dir=tmp_path, accelerator=SimpleNamespace(num_processes=1, process_index=0, distributed_type="NO"))
    ranks = [Trainer(tiny_mini(seed=0), output_dir=tmp_path, accelerator=SimpleNamespace(num_processes=2, process_index=r, distributed_type="MULTI_CPU"))
             for r in (0, 1)]
    for index in range(10):  # two and a half epochs
        want, real = single._micro_batch(samples, one, index)
        assert real
        got = [rank._micro_batch(samples, per_rank, index) for rank in ranks]
        assert sorted(s for batch, real in got if real for s in batch) == sorted(want)
        assert all(batch for batch, _ in got)  # every rank runs forward/backward (DDP all-reduces every rank)
