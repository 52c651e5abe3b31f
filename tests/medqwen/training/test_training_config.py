from pathlib import Path

import pytest

from medqwen.training import ConfigError, load_experiment, load_stage

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_are_shipped():
    assert len(SHIPPED) >= 6


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_parses(path):
    variables = {"data_root": "/data"}
    if path.parent.name == "experiments":
        experiment = load_experiment(path, variables)
        assert experiment.stages and all(stage.data for stage in experiment.stages)
    else:
        stage = load_stage(path, variables)
        assert stage.trainable and stage.data


def _write(tmp_path, text, name="stage.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = "name: s\ntrainable: [projector]\ndata: [{format: vqa_rad, path: x}]\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (BASE + "lr: -1\n", "field 'lr' = -1 must be a number > 0.0"),
        (BASE + "batch_size: 0\n", "field 'batch_size' = 0 must be an integer >= 1"),
        (BASE + "epochz: 3\n", "unknown field(s) ['epochz']"),
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
