"""The prefix-shared sequence scorer against one full row per (question, candidate)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medqwen.data.schema import Sample
from medqwen.eval.ranking import candidate_logprobs, per_row_logprobs, prefix_shared_logprobs
from medqwen.models import tiny_mini
from sslora import SSLoRAConfig, get_sslora_model

# candidates of 1 to several answer tokens, one a prefix of another, one list of length 1
CANDIDATES = [["yes", "no"], ["glioma", "meningioma", "pituitary"], ["left", "left kidney"], ["ct"], ["no", "yes"]]


def _samples(n: int) -> list[Sample]:
    out = []
    for i in range(n):
        pixels = (np.random.RandomState(i).rand(32, 32, 3) * 255).astype("uint8")
        question = "Is this a CT?" if i % 2 else "Which type of brain tumor does this MRI show, in a few words?"
        out.append(Sample([], question, "yes", "closed", "t", "test", {}, Image.fromarray(pixels)))
    return out


@pytest.fixture(scope="module")
def adapted():
    """tiny MedQwen-mini with a routed SSLoRA adapter whose B are perturbed (a non-trivial update)."""
    model = get_sslora_model(tiny_mini(seed=0), SSLoRAConfig(r=8, num_experts=4, top_k=2, target_modules="llama"),
                             use_cache=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("blank_images", [False, True])
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_prefix_shared_scores_equal_one_row_per_candidate(adapted, blank_images, batch_size):
    samples = _samples(len(CANDIDATES))
    fast = prefix_shared_logprobs(adapted, samples, CANDIDATES, blank_images=blank_images, batch_size=batch_size)
    slow = per_row_logprobs(adapted, samples, CANDIDATES, blank_images=blank_images, batch_size=3)
    assert [len(row) for row in fast] == [len(c) for c in CANDIDATES]
    for f, s in zip(fast, slow):
        torch.testing.assert_close(torch.tensor(f), torch.tensor(s), rtol=1e-4, atol=1e-4)


def test_candidate_logprobs_takes_the_prefix_path_only_where_the_model_supports_it(adapted, monkeypatch):
    samples, calls = _samples(2), []
    import medqwen.eval.ranking as ranking

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        monkeypatch.setattr(ranking, name, wrapped)

    spy("prefix_shared_logprobs", prefix_shared_logprobs)
    spy("per_row_logprobs", per_row_logprobs)
    candidate_logprobs(adapted, samples, CANDIDATES[:2])
    monkeypatch.setattr(type(adapted.base_model), "supports_prefix_cache", False)
    candidate_logprobs(adapted, samples, CANDIDATES[:2])
    assert calls == ["prefix_shared_logprobs", "per_row_logprobs"]


def test_routing_statistics_count_the_prompt_once_and_skip_padding(adapted):
    """Routed tokens = real prompt tokens (once per question) + real continuation tokens: padding
    of either pass is kept out of the statistics."""
    samples = _samples(3)
    options = [["yes", "no"], ["glioma", "meningioma", "pituitary"], ["ct"]]
    vlm = adapted.base_model
    prompt_tokens = sum(len(vlm.build_inputs([s.image], [s.question])["input_ids"][0]) for s in samples)
    from medqwen.eval.ranking import answer_tokens

    continuation_tokens = sum(len(answer_tokens(vlm, c)) - 1 for opts in options for c in opts)
    adapted.reset_routing_stats()
    with adapted.recording_routing():
        prefix_shared_logprobs(adapted, samples, options, batch_size=2)
    counted = {sum(layer["counts"]) for layer in adapted.routing_stats(reset=True).values()}
    assert counted == {2 * (prompt_tokens + continuation_tokens)}  # top-2: each token counts twice


def test_eval_speed_benchmark_reports_equal_scores_for_both_paths(capsys):
    """benchmarks/eval_speed.py --quick: every scorer timed, the prefix-shared scores equal the per-row ones."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "benchmarks" / "eval_speed.py"
    spec = importlib.util.spec_from_file_location("eval_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = bench.build_model(None)
    result = bench.measure(model, bench.quick_tasks(4)["three_way"], rounds=1, batch_size=2)
    assert set(result["scorers"]) == {"per_row", "prefix_shared", "first_token"}
    assert result["prefix_shared_max_abs_diff"] < 1e-4 and result["prefix_shared_argmax_agreement"] == 1.0
    assert result["scorers"]["per_row"]["vs_per_row"] == 1.0
