import json
import math

import pytest

from sslora import PRESETS, ConfigError, SSLoRAConfig, get_sslora_model


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


def test_unknown_key_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown SSLoRAConfig field\(s\) \['num_expert'\] \(did you mean 'num_experts'\?\)"):
        SSLoRAConfig.from_dict({"r": 8, "num_expert": 4})
    assert SSLoRAConfig.from_dict({"r": 8, "num_experts": 4}).r == 8


def test_adapter_config_written_by_save_pretrained_loads_and_a_typo_in_it_is_named(tmp_path):
    from .helpers import TinyMLP

    config = SSLoRAConfig(target_modules=["fc_in", "fc_mid"], r=8, num_experts=4)
    get_sslora_model(TinyMLP(), config).save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    payload = json.loads(path.read_text())
    assert {"layers", "library_version"} <= set(payload)  # metadata beside the fields
    loaded, _ = SSLoRAConfig.load(tmp_path)
    assert loaded.to_dict() == {**config.to_dict(), "library_version": payload["library_version"]}
    payload["top_kk"] = 1
    path.write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match=rf"{path}: unknown SSLoRAConfig field\(s\) \['top_kk'\] \(did you mean 'top_k'\?\)"):
        SSLoRAConfig.load(tmp_path)


def test_every_invalid_setting_is_one_error_type():
    assert issubclass(ConfigError, ValueError)  # callers catching ValueError keep working
    with pytest.raises(ConfigError):
        SSLoRAConfig(r=0)
