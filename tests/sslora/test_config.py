import math

import pytest

from sslora import PRESETS, SSLoRAConfig


def test_optimal_scaling_matches_formula():
    config = SSLoRAConfig(r=32, num_experts=8, scaling="optimal", eta=0.25, scaling_rank="total")
    assert config.scaling_for(3584) == pytest.approx(math.sqrt(3 * 3584 * 0.25 / 32))
    expert = SSLoRAConfig(r=32, num_experts=8, scaling="optimal", eta=0.25, scaling_rank="expert")
    assert expert.scaling_for(3584) == pytest.approx(math.sqrt(3 * 3584 * 0.25 / 4))
    assert SSLoRAConfig(scaling=4).scaling_for(3584) == 4.0


def test_preset_expands_to_language_model_projections():
    config = SSLoRAConfig(target_modules="qwen2_5_vl")
    assert config.target_modules == PRESETS["qwen2_5_vl"]["target_modules"]
    assert "visual" in config.exclude_modules


def test_json_round_trip(tmp_path):
    config = SSLoRAConfig(r=16, num_experts=4, top_k=1, init="minor", scaling=6.0, target_modules=["fc"])
    config.save(tmp_path)
    loaded, payload = SSLoRAConfig.load(tmp_path)
    assert loaded == config


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "SSLoRAConfig.r=0 must be an integer >= 1"),
        ({"r": 30, "num_experts": 8}, "r=30 must be divisible by num_experts=8"),
        ({"num_experts": 0}, "num_experts=0"),
        ({"top_k": 3, "num_experts": 2, "r": 8}, "top_k=3 must be <= num_experts=2"),
        ({"init": "svd"}, "SSLoRAConfig.init='svd' must be one of ['spectral', 'principal', 'minor', 'random', 'zero']"),
        ({"segment_slice": "middle"}, "segment_slice='middle' must be one of ['head', 'tail']"),
        ({"scaling": "best"}, "scaling='best' must be a positive number or 'optimal'"),
        ({"scaling": -1.0}, "scaling=-1.0 must be a positive number"),
        ({"scaling_rank": "layer"}, "scaling_rank='layer' must be one of ['total', 'expert']"),
        ({"rho": 0}, "rho=0 must be a number > 0"),
        ({"eta": -1}, "eta=-1 must be a number > 0"),
        ({"aux_loss_coef": -0.1}, "aux_loss_coef=-0.1 must be a number >= 0"),
        ({"dropout": 1.0}, "dropout=1.0 must be in [0, 1)"),
        ({"target_modules": []}, "target_modules must name at least one module"),
    ],
)
def test_bad_config_names_field_and_allowed_values(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        SSLoRAConfig(**kwargs)
