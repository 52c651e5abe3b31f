"""sslora.model_card: README.md with Hub-style YAML front matter for a saved adapter."""

import numpy as np
import torch
import yaml

from sslora import SSLoRAConfig, get_sslora_model
from sslora.model_card import MARKER, base_model_name, split_front_matter, write_model_card


def _config():
    return SSLoRAConfig(r=8, num_experts=4, top_k=2, target_modules=["fc1", "fc2"], init="spectral")


def test_card_front_matter_and_body(tmp_path):
    config = _config()
    path = write_model_card(
        tmp_path / "adapter", {**config.to_dict(), "library_version": "0.1.0"}, base_model="medqwen-mini",
        trainable_params=(1234, 567_890),
        training={"datasets": ["vqa_rad", {"format": "rocov2", "path": "/data/roco"}], "steps": np.int64(150),
                  "stages": ["stage1_alignment", "stage3_sslora"], "learning_rate": np.float32(2e-4)},
        results={"vqa_rad_test": {"closed_acc": 0.75, "open_recall": np.float64(0.5), "n": 451,
                                  "task": "visual-question-answering", "note": "text is skipped"}},
    )
    assert path == tmp_path / "adapter" / "README.md"
    text = path.read_text()
    assert text.startswith("---\n")
    meta, body = split_front_matter(text)
    assert meta["library_name"] == "sslora" and meta["base_model"] == "medqwen-mini"
    assert {"sslora", "peft", "lora", "base_model:adapter:medqwen-mini"} <= set(meta["tags"])
    assert meta["datasets"] == ["vqa_rad", "rocov2"]
    settings = meta["sslora"]
    assert (settings["r"], settings["num_experts"], settings["top_k"], settings["expert_rank"]) == (8, 4, 2, 2)
    assert settings["init"] == "spectral" and settings["target_modules"] == ["fc1", "fc2"]
    assert "library_version" not in settings
    assert meta["trainable_parameters"] == 1234 and meta["total_parameters"] == 567_890
    assert meta["training"]["steps"] == 150 and abs(meta["training"]["learning_rate"] - 2e-4) < 1e-9
    [entry] = meta["model-index"]
    [result] = entry["results"]
    assert result["task"]["type"] == "visual-question-answering" and result["dataset"]["name"] == "vqa_rad_test"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"closed_acc": 0.75, "open_recall": 0.5}
    assert MARKER in body and "# SSLoRA adapter for `medqwen-mini`" in body
    assert "| `num_experts` | 4 |" in body and "1,234 trainable of 567,890" in body
    assert "| vqa_rad_test | visual-question-answering | closed_acc | 0.75 |" in body
    assert "SSLoRAModel.from_pretrained" in body


def test_minimal_card_and_rewrite(tmp_path):
    path = write_model_card(tmp_path, _config().to_dict())
    meta, body = split_front_matter(path.read_text())
    assert "base_model" not in meta and "model-index" not in meta and "training" not in meta
    assert meta["tags"][:2] == ["sslora", "peft"]
    # our own card is rewritten from the new arguments
    write_model_card(tmp_path, _config().to_dict(), base_model="org/base", results={"acc": 0.5})
    meta, body = split_front_matter(path.read_text())
    assert meta["base_model"] == "org/base" and "org/base" in body
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "evaluation"


def test_a_hand_written_card_keeps_its_text(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [radiology]\n---\n\nMy notes.\n")
    write_model_card(tmp_path, _config().to_dict(), base_model="org/base", trainable_params=10)
    meta, body = split_front_matter((tmp_path / "README.md").read_text())
    assert body == "My notes.\n"
    assert meta["license"] == "apache-2.0" and meta["tags"][0] == "radiology" and "sslora" in meta["tags"]
    assert meta["base_model"] == "org/base" and meta["trainable_parameters"] == 10


def test_from_a_real_adapter(tmp_path):
    """The call save_pretrained can make: config, the wrapped model as base, its parameter counts."""
    base = torch.nn.Sequential()
    base.add_module("fc1", torch.nn.Linear(16, 32))
    base.add_module("fc2", torch.nn.Linear(32, 16))
    model = get_sslora_model(base, _config(), use_cache=False)
    model.save_pretrained(tmp_path)
    trainable, total = model.trainable_parameters()
    write_model_card(tmp_path, model.sslora_config.to_dict(), base_model=model.base_model,
                     trainable_params=model.trainable_parameters())
    meta = yaml.safe_load((tmp_path / "README.md").read_text().split("---\n")[1])
    assert meta["trainable_parameters"] == trainable > 0 and meta["total_parameters"] == total
    assert "base_model" not in meta  # a bare nn.Module has no name


def test_save_pretrained_writes_the_card(tmp_path):
    """save_pretrained writes README.md itself: adapter parameter count, the training facts given."""
    base = torch.nn.Sequential()
    base.add_module("fc1", torch.nn.Linear(16, 32))
    base.add_module("fc2", torch.nn.Linear(32, 16))
    model = get_sslora_model(base, _config(), use_cache=False)
    model.save_pretrained(tmp_path, training={"steps": 7, "datasets": ["vqa_rad"]}, results={"vqa_rad": {"closed_acc": 0.5}})
    meta, body = split_front_matter((tmp_path / "README.md").read_text())
    layers = model.sslora_layers().values()
    assert meta["trainable_parameters"] == sum(p.numel() for layer in layers for p in layer.adapter_parameters())
    assert meta["training"]["steps"] == 7 and meta["datasets"] == ["vqa_rad"] and MARKER in body
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5


def test_base_model_names():
    class VLM(torch.nn.Module):
        base_config = {"name": "medqwen-mini", "kwargs": {}}

    class HF(torch.nn.Module):
        class config:  # noqa: N801 - mimics a transformers config
            _name_or_path = "Qwen/Qwen2.5-VL-7B-Instruct"

    assert base_model_name(VLM()) == "medqwen-mini"
    assert base_model_name(HF()) == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert base_model_name("x/y") == "x/y" and base_model_name(None) is None and base_model_name(torch.nn.Linear(1, 1)) is None
