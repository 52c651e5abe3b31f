import re
from pathlib import Path

import pytest

import medqwen
from medqwen.configs import PACKAGED, packaged_config
from medqwen.training import ConfigError, load_experiment, load_stage
from medqwen.training.config import load_yaml

REPO = Path(__file__).resolve().parents[3]
ACCELERATE = REPO / "configs" / "accelerate"  # `accelerate launch --config_file` files, not experiments
# the repository's configs/ and the ones inside the package (medqwen demo's)
SHIPPED = sorted(p for d in (REPO / "configs", PACKAGED) for p in d.rglob("*.yaml") if ACCELERATE not in p.parents)
ACCELERATE_CONFIGS = sorted(ACCELERATE.glob("*.yaml"))


def test_configs_are_shipped():
    assert len(SHIPPED) >= 6
    assert any(PACKAGED in p.parents for p in SHIPPED) and any(REPO / "configs" in p.parents for p in SHIPPED)


@pytest.mark.parametrize("name", ["experiments/demo_synthetic.yaml", "experiments/demo_vqa_rad.yaml"])
def test_the_demo_configs_are_package_data(name):
    path = packaged_config(name)  # what `medqwen demo` reads: inside the package, not the source checkout
    assert Path(medqwen.__file__).resolve().parent in path.parents
    assert load_experiment(path, {"data_root": "/data"}).stages


def test_medqwen_demo_reads_the_packaged_configs(monkeypatch, tmp_path):
    import medqwen.training
    from medqwen import cli

    class Stop(Exception):
        pass

    read = []

    def load_experiment_stub(path, variables):
        read.append(Path(path))
        raise Stop  # the lookup is what is tested, not a training run

    monkeypatch.setattr(medqwen.training, "load_experiment", load_experiment_stub)
    for data_root in (None, tmp_path):
        with pytest.raises(Stop):
            cli.demo(data_root=data_root, output_dir=tmp_path / "demo")
    assert read == [packaged_config("experiments/demo_synthetic.yaml"), packaged_config("experiments/demo_vqa_rad.yaml")]


def test_an_unknown_packaged_config_is_named():
    with pytest.raises(FileNotFoundError, match="demo_synthetic.yaml"):
        packaged_config("experiments/demo.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_parses(path):
    variables = {"data_root": "/data"}
    if "stages" in (load_yaml(path) or {}):  # an experiment (stages inline or by path), else one stage
        experiment = load_experiment(path, variables)
        assert experiment.stages and all(stage.data for stage in experiment.stages)
    else:
        stage = load_stage(path, variables)
        assert stage.trainable and stage.data


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # accelerate's own reader: unknown keys are refused
    assert config.num_processes >= 2 and config.num_machines == 1


def test_the_accelerate_configs_are_shipped():
    assert {p.name for p in ACCELERATE_CONFIGS} >= {"cpu_2proc.yaml", "ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"}


def _write(tmp_path, text, name="stage.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = "name: s\ntrainable: [projector]\ndata: [{format: vqa_rad, path: x}]\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (BASE + "lr: -1\n", "field 'lr' = -1 must be a finite number > 0.0"),
        (BASE + "lr: .inf\n", "field 'lr' = inf must be a finite number > 0.0"),
        (BASE + "max_grad_norm: -1\n", "field 'max_grad_norm' = -1 must be a finite number > 0.0"),
        (BASE + "warmup_ratio: -5\n", "field 'warmup_ratio' = -5 must be a finite number >= 0.0 and < 1.0"),
        (BASE + "min_lr_ratio: 7\n", "field 'min_lr_ratio' = 7 must be a finite number >= 0.0 and <= 1.0"),
        (BASE + "weight_decay: lots\n", "field 'weight_decay' = 'lots' must be a finite number >= 0.0"),
        ("name: s\ntrainable: [projector]\ndata: [{format: vqa_rad, path: x, limit: 1.5}]\n", "data[0]: field 'limit' = 1.5 must be an integer >= 1"),
        ("name: s\ntrainable: [projector]\ndata: [{format: vqa_rad, path: x, limit: -1}]\n", "field 'limit' = -1 must be an integer >= 1"),
        ("name: s\ntrainable: [adapter]\nadapter: {rnak: 32}\ndata: [{format: vqa_rad, path: x}]\n", "field 'adapter': unknown key(s) ['rnak'] (did you mean 'r'?); allowed: ['add_aux_loss_to_loss'"),
        (BASE + "batch_size: 0\n", "field 'batch_size' = 0 must be an integer >= 1"),
        (BASE + "epochz: 3\n", "unknown field(s) ['epochz'] (did you mean 'epochs'?)"),
        ("name: s\ntrainable: [decoder]\ndata: [{format: vqa_rad, path: x}]\n", "field 'trainable' has 'decoder'"),
        ("name: s\ntrainable: [projector]\ndata: []\n", "field 'data' is empty"),
        (BASE + "adapter: {kind: ia3}\n", "field 'adapter.kind' = 'ia3'"),
        (BASE + "adapter: {kind: sslora, r: 30}\n", "field 'adapter': SSLoRAConfig.r=30 must be divisible"),
        ("trainable: [projector]\ndata: [{format: vqa_rad, path: x}]\n", "missing required field(s) ['name']"),
        ("name: s\ntrainable: [projector]\ndata: [{path: x}]\n", "data[0]: missing required field(s) ['format']"),
        ("name: [unclosed\n", "line 2 invalid YAML"),
    ],
)
def test_bad_stage_names_file_and_field(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_stage(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_unset_variable_is_named(tmp_path):
    path = _write(tmp_path, "name: s\ntrainable: [projector]\ndata: [{format: vqa_rad, path: '${data_root}/x'}]\n")
    with pytest.raises(ConfigError, match=r"\$\{data_root\} is used but not set \(pass --data-root\)"):
        load_stage(path)
    assert load_stage(path, {"data_root": "/d"}).data[0].path == "/d/x"


def test_two_eval_sets_writing_the_same_file_are_refused(tmp_path):
    stage = "stages: [{name: s, trainable: [projector], data: [{format: vqa_rad, path: x}]}]\n"
    same = "eval: [{format: vqa_rad, path: a, split: test}, {format: vqa_rad, path: b, split: test}]\n"
    with pytest.raises(ConfigError, match=r"eval\[1\] and eval\[0\] both write 'vqa_rad_test'"):
        load_experiment(_write(tmp_path, "model: tiny-mini\n" + stage + same, "e.yaml"))
    named = "eval: [{format: vqa_rad, path: a, split: test}, {format: vqa_rad, path: b, split: test, name: other, task: rank}]\n"
    experiment = load_experiment(_write(tmp_path, "model: tiny-mini\n" + stage + named, "f.yaml"))
    assert [e.name for e in experiment.eval] == [None, "other"] and experiment.eval[1].task == "rank"



@pytest.mark.parametrize("field, value, message", [
    ("seed", "abc", "field 'seed' = 'abc' must be an integer >= 0"),
    ("eval_batch_size", 0, "field 'eval_batch_size' = 0 must be an integer >= 1"),
    ("max_new_tokens", -5, "field 'max_new_tokens' = -5 must be an integer >= 1"),
])
def test_bad_experiment_fields_are_named(tmp_path, field, value, message):
    stage = "stages: [{name: s, trainable: [projector], data: [{format: vqa_rad, path: x}]}]\n"
    path = _write(tmp_path, f"model: tiny-mini\n{field}: {value}\n" + stage, "e.yaml")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_experiment(path)
    assert str(path) in str(err.value)


def test_configs_validate_when_constructed_not_only_when_parsed():
    from medqwen.training import DataSpec, StageConfig

    with pytest.raises(ConfigError, match="field 'max_grad_norm' = -1"):
        StageConfig(name="s", trainable=["projector"], data=[DataSpec(format="vqa_rad")], max_grad_norm=-1)
    with pytest.raises(ConfigError, match="field 'limit' = 0"):
        DataSpec(format="vqa_rad", limit=0)


def test_every_invalid_setting_raises_the_one_config_error():
    from medqwen import errors
    from medqwen.data.registry import UnknownOptionError
    from medqwen.dual.adapters import MethodSpec
    from medqwen.training import DataSpec

    assert ConfigError is errors.ConfigError and issubclass(UnknownOptionError, ConfigError)
    with pytest.raises(ConfigError, match="method 'lorra'"):
        MethodSpec("lorra")
    with pytest.raises(ConfigError, match="field 'name' = 'a/b' must be a file name"):
        DataSpec(format="vqa_rad", name="a/b")
    assert DataSpec(format="vqa_rad", split="test", task="pope").output_name == "vqa_rad_test_pope"
    assert DataSpec(format="vqa_rad", split="test", name="held_out").output_name == "held_out"
