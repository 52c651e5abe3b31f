"""Sequence / method YAML parsing: every shipped file parses; bad input names the file and the field."""

from pathlib import Path

import pytest

from medqwen.continual import apply_limits, load_method, load_sequence, parse_overrides
from medqwen.training import ConfigError

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "benchmarks" / "continual"
METHODS = sorted((BENCH / "methods").glob("*.yaml")) + sorted((BENCH / "ablations").glob("*.yaml"))
VARIANT_METHODS = sorted((BENCH / "variants").glob("*.yaml"))
SEQUENCES = sorted(p for p in BENCH.glob("*.yaml") if p.name != "variants.yaml")


def test_every_shipped_yaml_is_covered():
    shipped = sorted(BENCH.rglob("*.yaml"))
    assert shipped == sorted(METHODS + VARIANT_METHODS + SEQUENCES + [BENCH / "variants.yaml"])
    assert {p.stem for p in (BENCH / "methods").glob("*.yaml")} == {"lora", "pissa", "milora", "moelora", "sslora", "full_ft"}
    names = [load_method(p).name for p in METHODS]
    assert len(names) == len(set(names)) and names == [p.stem for p in METHODS]  # --method NAME finds the file


@pytest.mark.parametrize("path", METHODS + VARIANT_METHODS, ids=lambda p: str(p.relative_to(BENCH)))
def test_every_method_parses_with_every_sequence(path):
    method = load_method(path)
    for sequence in SEQUENCES:
        config = load_sequence(sequence, data_root="/data", method=path.stem if path in METHODS else path)
        assert config.method == method
    if method.adapter is not None:
        from medqwen.training import adapter_config

        config = adapter_config(method.adapter)
        assert config.r in (8, 32) and config.r % config.num_experts == 0


@pytest.mark.parametrize("path", SEQUENCES, ids=lambda p: p.name)
def test_every_sequence_parses(path):
    config = load_sequence(path, data_root="/data")
    assert config.tasks and all(t.metric == "closed_rank" and t.steps >= 1 and t.train and t.eval for t in config.tasks)
    capped = apply_limits(config, max_steps=3, max_train=10, max_eval=4)
    assert all(t.steps == 3 for t in capped.tasks)
    assert all(s.limit == 10 for t in capped.tasks for s in t.train) and all(s.limit == 4 for t in capped.tasks for s in t.eval)


def test_the_headline_sequence_and_the_one_task_vqa_rad_probe():
    assert [t.name for t in load_sequence(BENCH / "vqa_rad_closed_only.yaml", data_root="/data").tasks] == ["vqa_rad_closed"]
    path = BENCH / "sequence.yaml"
    config = load_sequence(path, data_root="/data")
    assert [t.name for t in config.tasks] == ["brain_tumor", "pneumonia", "vqa_rad_closed"]
    assert config.tasks[0].train[0].path == "/data/brain_tumor_mri"
    assert config.tasks[0].eval[0].options["per_class"] == 50  # a variable keeps its type
    assert config.tasks[1].candidates == ["yes", "no"]
    small = load_sequence(path, data_root="/data", overrides={"steps_brain": 7})
    assert small.tasks[0].steps == 7 and small.fingerprint() != config.fingerprint()
    assert [t.steps for t in apply_limits(config, max_steps=3, max_train=10, max_eval=4).tasks] == [3, 3, 3]
    assert config.tasks[0].steps == 300  # the original is unchanged


TASK = """
  - name: t1
    train: [{format: synthetic, path: x, split: train}]
    eval: [{format: synthetic, path: x, split: test}]
    steps: 5
"""
METHOD = "method: {name: m, trainable: [adapter], adapter: {kind: lora, r: 8}}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: s\n" + METHOD + "tasks:\n" + TASK.replace("steps: 5", "steps: 0"), "tasks[0]: field 'steps' = 0 must be an integer >= 1"),
        ("name: s\n" + METHOD + "tasks:\n" + TASK.replace("steps: 5", "steps: 5\n    epochs: 1"), "tasks[0]: give exactly one of the fields 'steps' and 'epochs'"),
        ("name: s\n" + METHOD + "tasks:\n" + TASK + "    metric: bleu\n", "tasks[0]: field 'metric' = 'bleu'; allowed"),
        ("name: s\n" + METHOD + "tasks:\n" + TASK + "    candidates: [yes, no]\n", "field 'candidates' has True, not a string (YAML reads unquoted yes/no"),
        ("name: s\n" + METHOD + "tasks:\n" + TASK + "    stepz: 3\n", "tasks[0]: unknown field(s) ['stepz']"),
        ("name: s\n" + METHOD + "tasks:\n" + TASK.replace("eval: [{format: synthetic, path: x, split: test}]", "eval: []"), "tasks[0]: field 'eval' must be a non-empty list"),
        ("name: s\n" + METHOD + "tasks:\n" + TASK + TASK, "task names ['t1', 't1'] are not unique"),
        ("name: s\n" + METHOD + "tasks: []\n", "field 'tasks' is empty or missing"),
        ("name: s\ntasks:\n" + TASK, "field 'method' is missing"),
        ("name: s\nmethod: {name: m, trainable: [adapter]}\ntasks:\n" + TASK, "method: field 'trainable' names 'adapter' but field 'adapter' is missing"),
        ("name: s\nmethod: {name: m, trainable: [decoder]}\ntasks:\n" + TASK, "method: field 'trainable' has 'decoder'"),
        ("name: s\nmethod: {name: m, trainable: [adapter], adapter: {kind: sslora, r: 30}}\ntasks:\n" + TASK, "method: field 'adapter': SSLoRAConfig.r=30"),
        ("name: s\n" + METHOD + "tasks:\n" + TASK.replace("path: x, split: train", "path: '${data_root}/x'"), "${data_root} is used but not set (pass --data-root"),
        ("name: s\n" + METHOD + "tasks:\n" + TASK.replace("steps: 5", "steps: '${n}'"), "${n} is used but not set (pass --var n=..."),
        ("name: s\n" + METHOD + "modell: x\ntasks:\n" + TASK, "unknown field(s) ['modell']"),
        ("name: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_sequence_names_file_and_field(tmp_path, text, message):
    path = tmp_path / "seq.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_sequence(path)
    assert str(err.value).startswith(str(path)), str(err.value)
    assert message in str(err.value)


def test_unknown_method_and_variable_overrides(tmp_path):
    path = tmp_path / "seq.yaml"
    path.write_text("name: s\nvariables: {n: 5}\n" + METHOD + "tasks:\n" + TASK.replace("steps: 5", "steps: '${n}'"))
    assert load_sequence(path, overrides=parse_overrides(["n=9"])).tasks[0].steps == 9
    with pytest.raises(ConfigError, match=r"--var \['m'\] not among the file's variables \['n'\]"):
        load_sequence(path, overrides={"m": 1})
    with pytest.raises(ConfigError, match="method 'nope': no such file"):
        load_sequence(path, method="nope")
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_overrides(["n"])
    # "1e-3" is text to YAML 1.1 (it wants a dot); on the command line it is the number
    assert parse_overrides(["lr=1e-3", "a=1.0e-3", "b=null", "c=yes", "d=glioma", "e=nan"]) == {
        "lr": 1e-3, "a": 1e-3, "b": None, "c": True, "d": "glioma", "e": "nan"}


def test_the_point7_variants_file_parses_into_sequences():
    import importlib.util

    spec = importlib.util.spec_from_file_location("continual_variants", BENCH / "variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    loaded = variants.load_variants(BENCH / "variants.yaml")
    assert loaded["variants"] and isinstance(loaded["seed"], int)
    for variant in loaded["variants"]:
        config = load_sequence(BENCH / "sequence.yaml", data_root="/data", method=variant["method"], overrides=variant["var"])
        if "lr" in variant["var"]:
            assert all(t.lr == variant["var"]["lr"] for t in config.tasks)


def test_a_bad_variants_file_names_the_entry(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("continual_variants", BENCH / "variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    path = tmp_path / "v.yaml"
    path.write_text("variants:\n  - {name: a, method: lora}\n  - {name: a, method: sslora}\n")
    with pytest.raises(SystemExit, match=r"v.yaml: variants\[1\]: name 'a' used twice"):
        variants.load_variants(path)
    path.write_text("variants:\n  - {name: a, metod: lora}\n")
    with pytest.raises(SystemExit, match=r"variants\[0\]: expected \{name, method, var \(optional\)\}"):
        variants.load_variants(path)
