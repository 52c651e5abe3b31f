import inspect
import re
from pathlib import Path

import docstring_parser
import pytest
import torch

from sslora import SSLoRAConfig, SSLoRAModel
from sslora import cli
from sslora.cli import build_meta_model, main, parameter_budget
from sslora.model import SSLoRAModel as Wrapped

REPO = Path(__file__).resolve().parents[2]
QWEN_7B = REPO / "configs" / "qwen2_5_vl_7b_config.json"


def test_params_prints_table_and_last_line(capsys):
    main(["params", "--model-config", str(QWEN_7B)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("plain LoRA, r=32") for line in lines)
    assert any(line.startswith("full-rank upcycled MoE") for line in lines)
    match = re.fullmatch(r"trainable=(\d+) total=(\d+) percent=([0-9.]+)", lines[-1])
    assert match, lines[-1]
    trainable, total, percent = int(match[1]), int(match[2]), float(match[3])
    # 28 layers x (q, k, v, o, gate, up, down): r (m + n) + N n each
    shapes = [(3584, 3584), (512, 3584), (512, 3584), (3584, 3584), (18944, 3584), (18944, 3584), (3584, 18944)]
    assert trainable == 28 * sum(32 * (m + n) + 8 * n for m, n in shapes)
    assert percent == pytest.approx(100 * trainable / total, abs=1e-4)


def test_budget_formula_matches_injection_on_meta():
    model = build_meta_model(QWEN_7B)
    config = SSLoRAConfig(r=16, num_experts=4, top_k=1, target_modules="qwen2_5_vl+vision")
    budget = parameter_budget(model, config)
    wrapped = Wrapped._inject(model, config, cache=None, initialise=False)  # shapes only, on meta
    trainable, total = wrapped.trainable_parameters()
    assert trainable == budget["sslora"]
    assert total == budget["base"] + budget["sslora"]
    assert all(p.is_meta for p in wrapped.parameters())


def test_params_rejects_a_config_without_model_type(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    with pytest.raises(SystemExit):
        main(["params", "--model-config", str(bad)])
    assert "missing field 'model_type'" in capsys.readouterr().err


def test_init_precomputes_an_adapter_once(tmp_path, capsys):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "model")
    (tmp_path / "sslora.yaml").write_text("sslora:\n  r: 8\n  num_experts: 4\n  top_k: 2\n  target_modules: llama\n")
    args = ["init", "--model", str(tmp_path / "model"), "--config", str(tmp_path / "sslora.yaml"), "--out", str(tmp_path / "adapter"),
            "--cache-dir", str(tmp_path / "cache")]
    main(args)
    assert "SVD computed: 14, read from cache: 0" in capsys.readouterr().out
    main(args[:-4] + ["--out", str(tmp_path / "adapter2"), "--cache-dir", str(tmp_path / "cache")])
    assert "SVD computed: 0, read from cache: 14" in capsys.readouterr().out
    ids = torch.randint(0, 64, (1, 5))
    a = SSLoRAModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(tmp_path / "model"), tmp_path / "adapter")
    b = SSLoRAModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(tmp_path / "model"), tmp_path / "adapter2")
    assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_of_every_command(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: each help text is found whole
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sslora " + (command or ""))
    text = " ".join(out.split())
    funcs = [cli.COMMANDS[command]] if command else []
    for func in funcs:
        for doc in docstring_parser.parse(inspect.getdoc(func)).params:
            assert " ".join(doc.description.split()) in text, doc.arg_name
        for name in inspect.signature(func).parameters:
            assert "--" + name.replace("_", "-") in text


def test_flags_users_know():
    """The README's `sslora params` / `sslora init` lines, parsed to the values the commands receive."""
    parsed = cli.parser().parse_args(["params", "--model-config", "c.json", "--r", "16", "--num-experts", "4", "--top-k", "1",
                                      "--include-vision", "--target-modules", "q_proj", "v_proj"])["params"]
    parsed.pop("config")  # the --config file option (none given)
    assert dict(parsed) == dict(model_config=Path("c.json"), r=16, num_experts=4, top_k=1, include_vision=True,
                                target_modules=["q_proj", "v_proj"])
    parsed = cli.parser().parse_args(["init", "--model", "m", "--config", "s.yaml", "--out", "a", "--cache-dir", "c"])["init"]
    assert dict(parsed) == dict(model="m", config=Path("s.yaml"), out=Path("a"), cache_dir=Path("c"))
