"""Presets load into typed config; `--set` reaches nested fields with type coercion."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from app.contract import PromptFormat
from training.config import ScheduleName, TrainConfig
from training.config_io import (
    PRESETS_DIR,
    ConfigError,
    apply_override,
    check_choices,
    choices,
    config_to_dict,
    load_config,
    preset_names,
)
from training.model_build import SCHEDULES

REPO = Path(__file__).resolve().parents[2]


def test_presets_exist_and_start_with_their_command() -> None:
    assert {"falcon-7b-qlora", "smollm2-cpu", "tiny"} <= set(preset_names())
    for preset in PRESETS_DIR.glob("*.yaml"):
        first = preset.read_text(encoding="utf-8").splitlines()[0]
        assert first == f"# teller train {preset.stem}", preset
        load_config(preset.stem)  # every preset parses into the dataclasses


def test_falcon_preset_is_the_qlora_recipe() -> None:
    config = load_config("falcon-7b-qlora")
    assert config.base_model == "tiiuae/falcon-7b"
    assert (config.quantization, config.dtype) == ("nf4", "bfloat16")
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (64, 16, 0.1)
    assert config.lora.target_modules == [
        "query_key_value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
    ]
    assert config.optim.lr == 2e-4 and config.optim.optimizer == "paged_adamw_8bit"
    assert config.data.max_seq_len == 512 and config.gradient_checkpointing


def test_set_coerces_nested_values_to_field_types() -> None:
    config = load_config(
        "tiny",
        [
            "max_steps=2",
            "lora.r=8",
            "lora.dropout=0.05",
            "data.packing=no",
            "lora.target_modules=q_proj,v_proj",
            "optim.betas=[0.9, 0.95]",
            "name=x=y",
        ],
    )
    assert config.max_steps == 2 and isinstance(config.max_steps, int)
    assert config.lora.r == 8 and config.lora.dropout == 0.05
    assert config.data.packing is False
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.optim.betas == [0.9, 0.95]
    assert config.name == "x=y"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("lora.rank=8", "unknown config key 'lora.rank'"),
        ("max_stepz=2", "unknown config key 'max_stepz'"),
        ("loraa.r=8", "unknown config key 'loraa'"),
        ("max_steps=two", "max_steps: expected an integer"),
        ("max_steps=1.5", "max_steps: expected an integer"),
        ("data.packing=maybe", "data.packing: expected true/false"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("lora=8", "lora is a section"),
        ("max_steps", "expects key=value"),
        ("quantization=4bit", "quantization: expected one of nf4, 8bit, none, got '4bit'"),
        ("dtype=float16", "dtype: expected one of auto, bfloat16, float32"),
        ("device=tpu", "device: expected one of auto, cpu, cuda"),
        ("prompt_format=chatml", "prompt_format: expected one of chat_template, alpaca"),
        ("lora.bias=some", "lora.bias: expected one of none, all, lora_only"),
        ("optim.optimizer=sgd", "optim.optimizer: expected one of auto, paged_adamw_8bit, adamw"),
        ("optim.scheduler=step", "optim.scheduler: expected one of cosine, linear, constant"),
        ("report_to=wandb", "report_to: expected one of none"),
    ],
)
def test_bad_overrides_name_the_key(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        apply_override(TrainConfig(), assignment)


def test_unknown_key_in_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("base_model: x\nlora:\n  rank: 4\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown config key 'lora\.rank'"):
        load_config(str(path))


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*tiny"):
        load_config("nope")


def test_every_field_has_a_docstring() -> None:
    """Docstrings per field are the documentation of the YAML keys."""
    import ast
    import inspect

    import training.config as module

    tree = ast.parse(inspect.getsource(module))
    for node in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = node.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), (
                    f"{node.name}.{stmt.target.id} has no docstring"
                )


def choice_fields(cls: type = TrainConfig, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Every fixed-choice field as `--set` spells it, with its choices."""
    found: dict[str, tuple[str, ...]] = {}
    for name, annotation in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(annotation):
            found.update(choice_fields(annotation, f"{prefix}{name}."))
        elif choices(annotation):
            found[f"{prefix}{name}"] = choices(annotation)
    return found


def test_fixed_choices_are_typed_and_coerced() -> None:
    assert set(choice_fields()) == {
        "prompt_format",
        "quantization",
        "dtype",
        "device",
        "report_to",
        "lora.bias",
        "optim.optimizer",
        "optim.scheduler",
    }
    config = load_config("tiny", ["prompt_format=chat_template", "quantization= 8bit "])
    assert config.prompt_format is PromptFormat.CHAT_TEMPLATE
    assert config.quantization == "8bit"


def test_a_bad_choice_in_yaml_names_the_key_and_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("base_model: x\noptim:\n  scheduler: true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"optim\.scheduler: expected one of cosine, linear"):
        load_config(str(path))


def test_a_config_built_in_code_is_checked_too() -> None:
    config = TrainConfig()
    check_choices(config)
    config.lora.bias = "every"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"lora\.bias: expected one of none, all, lora_only"):
        check_choices(config)


def test_config_to_dict_is_plain_yaml() -> None:
    """The run folder's config.yaml and the manifest hold strings, not enum objects."""
    data = config_to_dict(load_config("smollm2-cpu"))
    assert type(data["prompt_format"]) is str and data["prompt_format"] == "chat_template"
    assert yaml.safe_load(yaml.safe_dump(data))["lora"] == data["lora"]


def test_every_schedule_maps_to_a_transformers_one() -> None:
    assert set(SCHEDULES) == set(typing.get_args(ScheduleName))


def test_training_doc_names_every_choice() -> None:
    """docs/training.md's table: a fixed-choice field's meaning lists all its values."""
    doc = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    for key, allowed in choice_fields().items():
        row = re.search(rf"^\| `{re.escape(key)}` \|[^|]*\|(?P<meaning>.*)\|$", doc, re.M)
        assert row, f"docs/training.md has no row for {key}"
        named = set(re.findall(r"`([^`]+)`", row["meaning"]))
        assert not set(allowed) - named, f"{key}: the docs must name {set(allowed) - named}"
