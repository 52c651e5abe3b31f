"""The wrapper's forward shows the wrapped model's parameters: the Hugging Face Trainer with default
arguments (remove_unused_columns) trains a wrapped model."""

import copy
import inspect
import pickle

import torch

from sslora import SSLoRAConfig, get_sslora_model

from .helpers import TinyMLP


def _tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def test_forward_signature_is_the_wrapped_models():
    model = get_sslora_model(TinyMLP(), SSLoRAConfig(target_modules=["fc_in"], r=8, num_experts=4))
    assert list(inspect.signature(model.forward).parameters) == ["x", "attention_mask", "labels"]
    qwen = get_sslora_model(_tiny_qwen2(), SSLoRAConfig(target_modules="llama", r=8, num_experts=4))
    names = list(inspect.signature(qwen.forward).parameters)
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and "labels" in names
    assert list(inspect.signature(model.forward).parameters) == ["x", "attention_mask", "labels"]  # per instance
    x = torch.randn(2, 48)
    assert pickle.dumps(model)  # picklable, as multiprocessing spawn needs; the copy below goes through the
    for copied in (copy.deepcopy(model),):  # same __reduce_ex__ path without loading pickled bytes
        assert list(inspect.signature(copied.forward).parameters) == ["x", "attention_mask", "labels"]
        assert torch.equal(copied(x), model(x)) and copied.forward.__self__ is copied


def test_hf_trainer_with_default_arguments(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = get_sslora_model(_tiny_qwen2(), SSLoRAConfig(target_modules="llama", r=8, num_experts=4, aux_loss_coef=0.01))
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(8):
        ids = torch.randint(3, 64, (12,), generator=generator)
        # `text` is not a forward argument: the Trainer drops it (and, before, every other column too)
        rows.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long), "labels": ids.clone(), "text": "x"})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to=[], use_cpu=True)  # else defaults
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
