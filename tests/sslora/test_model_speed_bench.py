"""benchmarks/model_speed.py on a small 2-block stack: the profile attributes time to the routing ops,
and variants are built in rotated orders when timed over several processes."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # model_speed imports its siblings speed_models, speed_tools
spec = importlib.util.spec_from_file_location("model_speed", REPO / "benchmarks" / "model_speed.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["model_speed"] = bench  # its dataclasses look their module up
spec.loader.exec_module(bench)
import speed_models  # noqa: E402  (the variants and inputs model_speed times)


def test_rotation_covers_every_variant_once():
    keys = list(bench.VARIANTS)
    for shift in range(len(keys) + 2):
        order = bench.rotated(keys, shift)
        assert sorted(order) == sorted(keys) and order[0] == keys[shift % len(keys)]


def test_profile_finds_the_routing_ops_only_in_sslora(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLORA_CACHE", str(tmp_path))
    base = bench.build_stack("none", quick=True)
    variants = {"peft_lora": bench.build_stack("peft_lora", True, base.model), "sslora": bench.build_stack("sslora", True, base.model)}
    batch = speed_models.stack_train_batch(1, 16)
    profiles = bench.profile_training(variants, batch, rounds=1, top=200)
    ops = {key: {o["op"]: o["calls"] for o in p["ops"]} for key, p in profiles.items()}
    assert ops["sslora"].get("aten::topk", 0) > 0 and "aten::topk" not in ops["peft_lora"]
    assert ops["sslora"].get("_BalanceLoss", 0) > 0  # 2 blocks x 7 projections, one per layer call
    assert all(p["step_s_profiled"] > 0 for p in profiles.values())
    table = bench.profile_markdown(profiles, bench.VARIANTS, "peft_lora")
    assert "**SSLoRA 2-of-8 r=32** vs PEFT LoRA r=32" in table and "| aten::topk |" in table
