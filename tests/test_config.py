"""TOML config, overrides and validation errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shangpin.config import build_stage, load_config, parse_override
from shangpin.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_file_is_valid_and_matches_signature_defaults() -> None:
    cfg = load_config(ROOT / "configs" / "default.toml")
    stage = build_stage("extract_attributes", cfg)
    from shangpin.stages.extract_attributes import AttributeExtractor

    assert stage.get_params() == AttributeExtractor().get_params()


def test_overrides_are_typed() -> None:
    cfg = load_config(
        None,
        ["stages.extract_attributes.epochs=3", "learning_rate=5e-5", "pipeline.batch_size=8"],
        default_stage="extract_attributes",
    )
    assert cfg.stage_params("extract_attributes") == {"epochs": 3, "learning_rate": 5e-5}
    assert cfg.batch_size == 8
    assert parse_override("a=hello world", "extract_attributes")[1] == "hello world"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "stages.extract_attributes.epoch=3",
            r"stages.extract_attributes.epoch: unknown key. Valid keys: .*epochs",
        ),
        ("stages.extract_attributes.epochs=three", r"expected int .* found str 'three'"),
        ("stages.nope.x=1", r"unknown stage 'nope'. Available: categorize, extract_attributes"),
        ("epochs", r"expected an override like"),
        ("pipeline.batch_size=0", r"positive integer"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_relative_paths_resolve_against_config_file(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text("{}")
    (tmp_path / "c.toml").write_text('[stages.extract_attributes]\nschema_file = "schema.json"\n')
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.stage_params("extract_attributes")["schema_file"] == str((tmp_path / "schema.json").resolve())


def test_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[stages\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "c.toml")


def test_default_config_lists_categorize_defaults() -> None:
    from shangpin.stages.categorize import Categorizer

    cfg = load_config(ROOT / "configs" / "default.toml")
    assert build_stage("categorize", cfg).get_params() == Categorizer().get_params()


def test_default_config_matches_predict_attributes_signature() -> None:
    from shangpin.stages.predict_attributes import AttributePredictor

    cfg = load_config(ROOT / "configs" / "default.toml")
    assert build_stage("predict_attributes", cfg).get_params() == AttributePredictor().get_params()
