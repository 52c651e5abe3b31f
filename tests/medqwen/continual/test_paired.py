"""medqwen.continual.paired and benchmarks/continual/paired.py: each seed-1 run minus the reference run of its
own recipe build, the reference's own rebuild shift, the seed spread for scale; calibrated figures filled in
from answers.py rebuilds by run folder."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from medqwen.continual.paired import markdown, paired_deltas, plot, plot_pairs

REPO = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("continual_paired", REPO / "benchmarks" / "continual" / "paired.py")
paired_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired_script)


def _run(forgetting, final_avg, learned, sha, calibrated=None, folder=None):
    return {"metrics": {"forgetting": forgetting, "final_avg": final_avg, "learning_acc": learned}, "start_model_sha256": sha,
            "metrics_batch_calibrated": calibrated and {"forgetting": calibrated[0], "final_avg": calibrated[1]}, "dir": folder}


def _entry(runs: dict, std=(None, None)):
    return {"seeds": sorted(int(s) for s in runs), "runs": runs, "forgetting_std": std[0], "final_avg_std": std[1]}


A, B = "a" * 64, "b" * 64
FIRST = {  # build a: the reference over three seeds, a baseline, an ablation
    "sslora": _entry({"0": _run(0.10, 0.70, 0.7, None), "1": _run(0.16, 0.64, 0.72, A, (0.05, 0.70)),
                      "2": _run(0.13, 0.65, 0.7, A)}, std=(0.03, 0.04)),
    "lora": _entry({"0": _run(0.14, 0.70, 0.76, None), "1": _run(0.32, 0.59, 0.75, A, (0.23, 0.65))}),
    "ablations": {"init_zero": _entry({"1": _run(0.15, 0.66, 0.71, A)}), "references": {"sslora": "see the method"}},
}
SECOND = {  # build b: the reference again, an ablation; and a run of a third build with no reference
    "sslora": _entry({"1": _run(0.27, 0.61, 0.75, B, (0.16, 0.69))}),
    "ablations": {"scaling_expert_rank": _entry({"1": _run(0.22, 0.665, 0.78, B, (0.15, 0.71))}),
                  "rank8": _entry({"1": _run(0.3, 0.6, 0.7, "c" * 64)})},
}


def test_each_run_is_paired_with_the_reference_of_its_own_build():
    paired = paired_deltas([FIRST, SECOND], reference="sslora", seed=1)
    rows = {r["name"]: r for r in paired["rows"]}
    assert set(rows) == {"lora", "init_zero", "scaling_expert_rank"}
    assert rows["lora"]["kind"] == "method" and rows["init_zero"]["kind"] == "ablation"
    assert rows["lora"]["delta"]["forgetting"] == pytest.approx(0.32 - 0.16)
    assert rows["lora"]["delta"]["calibrated_final_avg"] == pytest.approx(0.65 - 0.70)
    assert rows["init_zero"]["delta"]["calibrated_forgetting"] is None  # the ablation has no calibrated figures
    # build b's ablation against build b's reference, not build a's
    assert rows["scaling_expert_rank"]["build"] == "bbbbbbbb"
    assert rows["scaling_expert_rank"]["delta"]["forgetting"] == pytest.approx(0.22 - 0.27)
    assert rows["scaling_expert_rank"]["delta"]["learning_acc"] == pytest.approx(0.78 - 0.75)
    assert paired["unpaired"] == [("rank8", "cccccccc")]
    (shift,) = paired["rebuild"]
    assert (shift["build"], shift["from_build"]) == ("bbbbbbbb", "aaaaaaaa")
    assert shift["delta"]["forgetting"] == pytest.approx(0.27 - 0.16)
    assert paired["seed_std"] == {"seeds": [0, 1, 2], "forgetting": 0.03, "final_avg": 0.04, "learning_acc": None}


def test_table_and_chart(tmp_path):
    paired = paired_deltas([FIRST, SECOND])
    table = markdown(paired)
    assert "| lora | method | aaaaaaaa | +16.0 | -5.0 | +3.0 | +18.0 | -5.0 |" in table
    assert "| init_zero | ablation | aaaaaaaa | -1.0 | +2.0 | -1.0 | — | — |" in table
    assert "| sslora itself, build bbbbbbbb minus aaaaaaaa | rebuilt recipe | bbbbbbbb | +11.0 |" in table
    assert "3.0 points of forgetting" in table and "(4.2 and 5.7)" in table  # sqrt(2) x the seed std
    assert "Left out (no reference run of their build yet): rank8 (cccccccc)" in table
    assert plot(paired, tmp_path / "paired.png").stat().st_size > 10_000


def test_calibrated_figures_come_from_the_rebuild_of_the_same_run_folder():
    aggregate = {"lora": _entry({"1": _run(0.3, 0.6, 0.7, A, folder="/elsewhere/clone/runs/continual/lora/seed1"),
                                 "2": _run(0.3, 0.6, 0.7, A, folder=str(REPO / "runs/other/lora/seed2"))})}
    rebuilt = [{"run": "runs/continual/lora/seed1", "batch": {"forgetting_mean": 0.2, "final_avg": 0.66}},
               {"run": "runs/continual/lora/seed2", "batch": {"forgetting_mean": 0.1, "final_avg": 0.7}}]
    assert paired_script.fill_calibrated([aggregate], rebuilt) == 1
    runs = aggregate["lora"]["runs"]
    assert runs["1"]["metrics_batch_calibrated"]["forgetting"] == 0.2
    assert runs["2"]["metrics_batch_calibrated"] is None  # another work folder: not this run's rebuild


def test_write_paired_reads_every_build_aggregate(tmp_path):
    (tmp_path / "continual.json").write_text(json.dumps(FIRST))
    (tmp_path / "continual_build" f"{B[:8]}.json").write_text(json.dumps(SECOND))
    paired = paired_script.write_paired(tmp_path)
    assert paired["sources"] == ["continual.json", "continual_buildbbbbbbbb.json"]
    assert json.loads((tmp_path / "continual_paired.json").read_text())["rebuild"][0]["build"] == "bbbbbbbb"
    assert (tmp_path / "continual_paired.png").exists() and "scaling_expert_rank" in (tmp_path / "continual_paired.md").read_text()


def test_seed_pairs_take_every_shared_seed_of_one_build_and_leave_ablations_out():
    mixed = {"sslora": _entry({"2": _run(0.1, 0.7, 0.7, A)}), "lora": _entry({"2": _run(0.2, 0.6, 0.7, B)}),
             "ablations": {"init_zero": _entry({"0": _run(0.1, 0.7, 0.7, None), "1": _run(0.1, 0.7, 0.7, A)})}}
    pairs = paired_deltas([FIRST, SECOND, mixed])["seed_pairs"]
    assert set(pairs) == {"lora"}  # init_zero is an ablation; seed 2's runs started from different builds
    lora = pairs["lora"]
    assert [(p["build"], p["seed"]) for p in lora["pairs"]] == [("first", 0), ("aaaaaaaa", 1)]
    test = lora["tests"]["forgetting"]  # differences 0.04 and 0.16
    assert (test["n"], test["mean"], test["std"]) == (2, pytest.approx(0.10), pytest.approx(0.06 * math.sqrt(2)))
    # t = 0.10 / (0.0849 / sqrt 2) = 5/3; one degree of freedom is the Cauchy law: p = 1 - (2/pi) atan|t|
    assert test["p"] == pytest.approx(1 - 2 / math.pi * math.atan(5 / 3))
    assert "calibrated_forgetting" not in lora["tests"]  # seed 0 has no calibrated figures
    assert lora["forgetting_power"]["pairs_for_gap"] >= 2
    table = markdown(paired_deltas([FIRST, SECOND]))
    assert "Same-seed pairs, lora minus sslora" in table
    assert "| from before fingerprints, seed 0 | +4.0 | +0.0 | +6.0 |" in table
    assert "| mean ± std over 2 pairs | +10.0 ± 8.5 | -2.5 ± 3.5 | +4.5 ± 2.1 |" in table
    assert "| paired t-test p | 0.34 | 0.50 | 0.20 |" in table


def test_the_power_note_says_when_no_number_of_pairs_would_do():
    same = {"sslora": _entry({"0": _run(0.0, 0.7, 0.7, A), "1": _run(0.5, 0.6, 0.7, A)}, std=(0.3, 0.1)),
            "lora": _entry({"0": _run(0.5, 0.7, 0.7, A), "1": _run(0.0, 0.6, 0.7, A)})}  # forgetting deltas +0.5, -0.5
    table = markdown(paired_deltas([same]))
    assert "At the observed mean difference (+0.0), 80% power needs more pairs than pairs_needed searches" in table


def test_pairs_chart(tmp_path):
    pairs = paired_deltas([FIRST, SECOND])["seed_pairs"]
    assert plot_pairs(pairs, tmp_path / "pairs.png").stat().st_size > 10_000


def test_variants_are_paired_with_the_reference_of_their_build_and_charted(tmp_path):
    variants = {"sslora_eta0.4": _run(0.36, 0.59, 0.79, B, (0.17, 0.70)), "elsewhere": _run(0.2, 0.6, 0.7, "c" * 64)}
    paired = paired_deltas([FIRST, SECOND], variants=variants)
    rows = {r["name"]: r for r in paired["rows"]}
    assert rows["sslora_eta0.4"]["kind"] == "variant" and rows["sslora_eta0.4"]["build"] == "bbbbbbbb"
    assert rows["sslora_eta0.4"]["delta"]["forgetting"] == pytest.approx(0.36 - 0.27)  # build b's reference
    assert rows["sslora_eta0.4"]["delta"]["calibrated_final_avg"] == pytest.approx(0.70 - 0.69)
    assert ("elsewhere", "cccccccc") in paired["unpaired"]
    assert "| sslora_eta0.4 | variant | bbbbbbbb | +9.0 | -2.0 | +4.0 | +1.0 | +1.0 |" in markdown(paired)
    assert plot(paired, tmp_path / "paired.png").stat().st_size > 10_000


def test_write_paired_reads_the_variant_records(tmp_path):
    (tmp_path / "continual.json").write_text(json.dumps(FIRST))
    record = {"metrics": {"forgetting": 0.2, "final_avg": 0.6, "learning_acc": 0.7}, "model_sha256": A}
    (tmp_path / "continual_variants" / "lora_lr1e-3").mkdir(parents=True)
    (tmp_path / "continual_variants" / "lora_lr1e-3" / "lora_seed1.json").write_text(json.dumps(record))
    (tmp_path / "continual_variants" / "lora_lr1e-3" / "lora_seed2.json").write_text(json.dumps(record))  # another seed
    rows = [r for r in paired_script.write_paired(tmp_path)["rows"] if r["kind"] == "variant"]
    assert [(r["name"], r["build"]) for r in rows] == [("lora_lr1e-3", "aaaaaaaa")]
    assert rows[0]["delta"]["forgetting"] == pytest.approx(0.2 - 0.16)
