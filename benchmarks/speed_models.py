"""The variants and inputs that benchmarks/model_speed.py times: MedQwen-mini and a 2-block stack at
Qwen2.5-VL-7B shapes, each with no adapter / PEFT LoRA / our LoRA / SSLoRA (plain and folded), and the
training batches and generation calls fed to them (see model_speed.py's docstring for what is measured)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sslora import PRESETS, SSLoRAConfig, get_sslora_model

VARIANTS = {
    "none": "no adapter",
    "peft_lora": "PEFT LoRA r=32",
    "our_lora": "our LoRA r=32 (N=1)",
    "sslora": "SSLoRA 2-of-8 r=32",
    "sslora_folded": "SSLoRA 2-of-8 r=32, fold_residual",
}
TARGETS = list(PRESETS["llama"]["target_modules"])
QUESTIONS = [
    "Is there evidence of a pneumothorax?",
    "What imaging modality was used to acquire this image?",
    "Is the heart enlarged?",
    "Which organ shows the abnormality in this scan?",
    "Are there any fractures visible in the ribs or the clavicles?",
    "Is this a CT or an MRI?",
    "Where is the lesion located?",
    "Is there fluid in the pleural space on the left side?",
    "What is the size of the mass compared with the adjacent vertebral body?",
    "Is the liver normal?",
    "Does the patient have a nasogastric tube in place?",
    "In which plane is this image taken?",
    "Are the lungs hyperinflated?",
    "Is there free air under the diaphragm?",
    "What abnormality is seen in the right lower lobe?",
    "Is the trachea midline?",
]
ANSWERS = ["yes", "x-ray", "no", "the liver", "no fractures are visible", "ct", "left upper lobe", "yes"]


# ---------------------------------------------------------------------------------------- variants
@dataclass
class Variant:
    key: str
    model: nn.Module  # what generate runs on (adapters injected in place)
    runner: nn.Module  # what a training step calls (the SSLoRA wrapper adds the balance loss)
    params: list = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None

    def make_optimizer(self) -> None:
        self.params = [p for p in self.runner.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5)


def _attach(key: str, model: nn.Module, lm: nn.Module, own_trainable: list[nn.Parameter]) -> Variant:
    """Freeze `model`, then give it variant `key`'s trainable part (in place)."""
    for p in model.parameters():
        p.requires_grad_(False)
    runner = model
    if key == "none":
        for p in own_trainable:
            p.requires_grad_(True)
    elif key == "peft_lora":
        from peft import LoraConfig, inject_adapter_in_model

        inject_adapter_in_model(LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=TARGETS), lm)
        for name, p in lm.named_parameters():
            p.requires_grad_("lora_" in name)
    elif key == "our_lora":
        config = SSLoRAConfig(r=32, num_experts=1, top_k=1, init="zero", aux_loss_coef=0.0, scaling=2.0, target_modules="llama")
        runner = get_sslora_model(model, config)
    elif key in ("sslora", "sslora_folded"):
        config = SSLoRAConfig(r=32, num_experts=8, top_k=2, target_modules="llama", fold_residual=key == "sslora_folded")
        runner = get_sslora_model(model, config)
    else:
        raise ValueError(key)
    variant = Variant(key, model, runner)
    variant.make_optimizer()
    return variant


def build_mini(key: str) -> Variant:
    from medqwen.models import load_model

    vlm = load_model("medqwen-mini")
    return _attach(key, vlm, vlm.lm, list(vlm.projector.parameters()))


def stack_config(quick: bool):
    from transformers import Qwen2Config

    shape = dict(hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=2) if quick else dict(
        hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4
    )
    return Qwen2Config(
        vocab_size=1024, num_hidden_layers=2, max_position_embeddings=4096, rope_theta=1e6,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape,
    )


def build_stack(key: str, quick: bool, shared: nn.Module | None = None) -> Variant:
    """The 2-block stack; with `shared`, its decoder weights are shared (not copied): adapters other
    than fold_residual never modify base weights, so those variants can read the same 1.9 GB."""
    from transformers import Qwen2ForCausalLM

    config = stack_config(quick)
    if shared is None:
        torch.manual_seed(0)  # the same weights every run: the spectral init is read from its cache
        model = Qwen2ForCausalLM(config)
    else:
        with torch.device("meta"):
            model = Qwen2ForCausalLM(config)
        state = {k: v if ".layers." in k else v.clone() for k, v in shared.state_dict().items()}
        model.load_state_dict(state, assign=True)
        owners = dict(model.named_modules())
        for name, buffer in shared.named_buffers():  # non-persistent buffers (rotary inv_freq)
            owner, _, attr = name.rpartition(".")
            if getattr(owners[owner], attr).is_meta:
                setattr(owners[owner], attr, buffer)
    model.config.use_cache = True
    return _attach(key, model, model, [model.model.embed_tokens.weight])


# ---------------------------------------------------------------------------------------- inputs
def mini_features(count: int) -> torch.Tensor:
    return torch.randn(count, 49, 1280, generator=torch.Generator().manual_seed(1)).relu()


def mini_train_batch(vlm, batch: int) -> dict:
    prompts = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
    answers = [ANSWERS[i % len(ANSWERS)] for i in range(batch)]
    return vlm.build_inputs(None, prompts, answers, image_features=mini_features(batch))


def train_batch(model_name: str, model, args) -> dict:
    return mini_train_batch(model, args.batch) if model_name == "mini" else stack_train_batch(1, args.seq_len)


def stack_train_batch(batch: int, seq_len: int) -> dict:
    ids = torch.randint(3, 1024, (batch, seq_len), generator=torch.Generator().manual_seed(2))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _generation_config(new_tokens: int, eos: int, pad: int):
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad
    )


@torch.no_grad()
def mini_generate(vlm, batch: int, new_tokens: int) -> int:
    """MedQwenMini.generate's path (build_inputs -> embed_inputs -> lm.generate) with image features
    and min_new_tokens; returns the number of new tokens per sequence."""
    prompts = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]
    inputs = vlm.build_inputs(None, prompts, image_features=mini_features(batch), padding_side="left")
    embeds = vlm.embed_inputs(inputs["input_ids"], image_features=inputs["image_features"])
    config = _generation_config(new_tokens, vlm.eot_token_id, vlm.pad_token_id)
    out = vlm.lm.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], generation_config=config)
    return out.shape[1]  # inputs_embeds only: the output holds the new tokens


@torch.no_grad()
def stack_generate(model, batch: int, new_tokens: int, prompt_len: int = 32) -> int:
    ids = torch.randint(3, 1024, (batch, prompt_len), generator=torch.Generator().manual_seed(3))
    config = _generation_config(new_tokens, model.config.eos_token_id, model.config.pad_token_id)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out.shape[1] - prompt_len
