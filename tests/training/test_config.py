"""Presets load into typed config; `--set` reaches nested fields with type coercion."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig
from training.config_io import PRESETS_DIR, ConfigError, apply_override, load_config, preset_names


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
