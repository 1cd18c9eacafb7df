from dataclasses import dataclass, field

import pytest

from flipcommon.config import ConfigError, load_config, parse_overrides


@dataclass
class Inner:
    rate: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    path: str = "x"
    count: int = 1
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)


def test_overrides_nest_and_keep_types():
    assert parse_overrides(["a.b=1", "c=true", "d=[1, 2]"]) == {
        "a": {"b": 1},
        "c": True,
        "d": [1, 2],
    }


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("path: y\ninner:\n  rate: 1e-3\nitems:\n  - {rate: 2}\n")
    config = load_config(Outer, path, ["count=3", "inner.names=[a]"])
    assert config == Outer("y", 3, Inner(1e-3, ["a"]), [Inner(2.0)])


def test_unknown_key_is_an_error_naming_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*'colour'.*known keys"):
        load_config(Outer, None, ["inner.colour=red"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="count: expected int"):
        load_config(Outer, None, ["count=many"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["count"])


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    from evaluation.config import EvalConfig
    from pipeline.config import PipelineConfig
    from training.config import TrainConfig

    root = Path(__file__).parent.parent / "configs"
    for path in (root / "pipeline").glob("*.yaml"):
        load_config(PipelineConfig, path)
    for path in (root / "train").glob("*.yaml"):
        load_config(TrainConfig, path)
    for path in (root / "eval").glob("*.yaml"):
        assert load_config(EvalConfig, path).tasks


def test_pipeline_hands_executors_absolute_local_paths(tmp_path, monkeypatch):
    from pipeline.config import PipelineConfig
    from pipeline.stage import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    config = PipelineConfig(output_dir="runs/shards")
    config.input.urls = ["meta/part.parquet", "s3://bucket/meta/"]
    config.decontamination.sources = ["eval/images"]
    config.clip_score.checkpoint = "open_clip:ViT-B-32@models/b32.safetensors"
    fixed = with_absolute_paths(config)
    assert fixed.output_dir == str(tmp_path / "runs/shards")
    assert fixed.input.urls == [str(tmp_path / "meta/part.parquet"), "s3://bucket/meta/"]
    assert fixed.decontamination.sources == [str(tmp_path / "eval/images")]
    assert fixed.clip_score.checkpoint == f"open_clip:ViT-B-32@{tmp_path}/models/b32.safetensors"
    assert fixed.clip_score.output_dir == ""  # unset stays unset (the default is derived)
    assert config.output_dir == "runs/shards"  # the caller's config is left as given
