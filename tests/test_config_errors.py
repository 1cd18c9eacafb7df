"""Every stage's CLI turns a bad config value into one line on stderr and exit status 2, never a
traceback: a property-based test feeds random bad overrides (wrong types, bools for numbers,
out-of-range numbers, YAML syntax errors, YAML 1.1 literals, unknown keys) to each stage."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flipcommon.config import ConfigError, Range, load_config, parse_overrides

ROOT = Path(__file__).resolve().parent.parent
# stage module, its config class (module, name), a config file it takes
STAGES = [
    ("pipeline", "pipeline.config", "PipelineConfig", "configs/pipeline/demo.yaml"),
    ("training", "training.config", "TrainConfig", "configs/train/flip_tiny.yaml"),
    ("evaluation", "evaluation.config", "EvalConfig", "configs/eval/demo.yaml"),
    ("explore", "explore.config", "ExploreConfig", "configs/explore/demo.yaml"),
    ("experiment", "experiment.config", "ExperimentConfig", "configs/experiment/flip_vs_clip.yaml"),
]
SYNTAX_ERRORS = ["[1,", "{a: 1", "'unclosed", "[a]]", "{a: [}"]


def leaves(cls, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted key, type hint) of every leaf field of a config dataclass."""
    found = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls, include_extras=True)[f.name]
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        if dataclasses.is_dataclass(base):
            found += leaves(base, f"{prefix}{f.name}.")
        else:
            found.append((f"{prefix}{f.name}", hint))
    return found


def bad_values(hint) -> list[str]:
    """YAML texts this field must refuse."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        base, rules = args[0], hint.__metadata__
        ranges = [rule for rule in rules if isinstance(rule, Range)]
        values = [v for v in bad_values(base) if not (ranges and v == "-1")]
        for rule in ranges:
            if rule.low is not None:
                values += [str(rule.low - 1)] + ([str(rule.low)] if rule.low_open else [])
            if rule.high is not None:
                values += [str(rule.high + 1)] + ([str(rule.high)] if rule.high_open else [])
        return values
    if origin in (typing.Union, type(int | None)):
        non_none = [a for a in args if a is not type(None)]
        return bad_values(non_none[0]) if len(non_none) == 1 else []
    if origin is typing.Literal:
        return ["not-a-choice", "[1]"]
    if origin is list:
        return ["5", "{a: 1}", "true"]
    if origin is dict:
        return ["5", "[1, 2]", "text"]
    if hint is bool:
        return ["1", "yes", "on", "text", "[true]"]
    if hint in (int, float):
        return ["true", "off", "text", "[1]", "{a: 1}", "-1", "1:20", ".nan"] + (
            ["1.5"] if hint is int else []
        )
    if hint is str:
        return ["[1, 2]", "{a: b}", "true", "12"]
    return []


def cases() -> list[tuple[str, str, str]]:
    found = []
    for stage, module, name, config in STAGES:
        cls = getattr(importlib.import_module(module), name)
        for key, hint in leaves(cls):
            for value in bad_values(hint):
                found.append((stage, config, f"{key}={value}"))
            for value in SYNTAX_ERRORS:
                found.append((stage, config, f"{key}={value}"))
        found.append((stage, config, "no_such_key=1"))
        found.append((stage, config, "=1"))
    return found


CASES = cases()


def run_cli(stage: str, config: str, overrides: list[str], monkeypatch, capsys) -> None:
    """Run a stage's CLI with a stage body that must not be reached; check the refusal."""
    main_module = importlib.import_module(f"{stage}.__main__")

    def must_not_run(*_args):
        raise AssertionError(f"{stage} ran with the bad overrides {overrides!r}")

    monkeypatch.setattr(main_module, "_run", must_not_run)
    with pytest.raises(SystemExit) as exit_:
        main_module.main([str(ROOT / config), *overrides])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, (overrides, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (overrides, err)
    assert "Traceback" not in err


def test_every_bad_override_of_every_stage_is_refused(monkeypatch, capsys):
    for stage, config, override in CASES:
        run_cli(stage, config, [override], monkeypatch, capsys)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_bad_overrides_among_good_ones_are_refused(data, monkeypatch, capsys):
    """A few bad overrides of one stage, in any order, with valid ones between them."""
    stage = data.draw(st.sampled_from([s[0] for s in STAGES]))
    config = next(s[3] for s in STAGES if s[0] == stage)
    good = {"pipeline": "download.threads=8", "training": "seed=3"}.get(stage, "")
    key = good.partition("=")[0]
    choices = [c[2] for c in CASES if c[0] == stage and c[2].partition("=")[0] != key]
    bad = data.draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3))
    overrides = data.draw(st.permutations(bad + ([good] if good else [])))
    run_cli(stage, config, list(overrides), monkeypatch, capsys)


def test_every_stage_has_cases():
    assert {c[0] for c in CASES} == {s[0] for s in STAGES} and len(CASES) > 500


@pytest.mark.parametrize(
    ("text", "value"),
    [("010", 10), ("0o17", 15), ("0x10", 16), ("1e-3", 0.001), ("true", True), ("on", "on")],
)
def test_numbers_and_booleans_read_as_yaml_1_2_reads_them(text, value):
    assert parse_overrides([f"a={text}"]) == {"a": value}
    assert isinstance(parse_overrides([f"a={text}"])["a"], type(value))


def test_a_yaml_error_in_a_config_file_names_the_file(tmp_path):
    from pipeline.config import PipelineConfig

    broken = tmp_path / "broken.yaml"
    broken.write_text("download:\n  threads: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(PipelineConfig, broken)


def test_a_value_then_keys_under_it_is_refused(monkeypatch, capsys):
    run_cli(
        "pipeline",
        "configs/pipeline/demo.yaml",
        ["download=5", "download.threads=3"],
        monkeypatch,
        capsys,
    )
    run_cli(
        "pipeline",
        "configs/pipeline/demo.yaml",
        ["download.threads=3", "download=5"],
        monkeypatch,
        capsys,
    )


@pytest.mark.parametrize(
    "override",
    [
        "download.threads=!!int abc",
        "download.shard_deadline_s=!!float abc",
        "download.threads=" + "9" * 5000,
        "spark.app_name=" + "[" * 3000 + "]" * 3000,
        "fetch.deadline_s=.inf",
        "fetch.deadline_s=" + "9" * 400,
        "demo={1: a, b: c}",
    ],
)
def test_inputs_that_used_to_raise_deep_inside_are_one_line(override, monkeypatch, capsys):
    run_cli("pipeline", "configs/pipeline/demo.yaml", [override], monkeypatch, capsys)


def test_a_folder_or_a_binary_file_as_config_is_one_line(tmp_path, monkeypatch, capsys):
    run_cli("pipeline", "configs/pipeline", [], monkeypatch, capsys)
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    run_cli("pipeline", str(binary), [], monkeypatch, capsys)
